"""Chapter 3: the GRU layer, a drop-in for :class:`torch.nn.GRU` built on the cell of chapter 1.

A layer runs the cell over time; a stack feeds layer ``l``'s output sequence to layer ``l + 1`` as its input
(with dropout between layers in training mode, never after the last); a bidirectional layer runs a second cell,
with its own weights, from the end of each sequence to its start and concatenates both outputs on the feature
axis. For layer ``l`` and direction ``d`` (0 forward, 1 reverse), ``h_n[l * num_directions + d]`` is that
direction's final state: after the last valid step going forward, after step 0 going backward.

Variable lengths (a :class:`PackedSequence`) are handled by masking: a step past a sequence's end leaves its
state unchanged and writes a zero output, which is exactly what cuDNN and ``nn.GRU`` compute on packed input.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from gru_lib.cell import GRUCell, gru_gates_from_projection
from gru_lib.lengths import length_mask

__all__ = ["GRU", "to_torch_modules"]


def _valid_mask(lengths: Tensor | None, steps: int, device: torch.device) -> Tensor | None:
    """(T, B, 1) bool, True while t < lengths[b] (past a sequence's end the state is held and the output is 0);
    None when ``lengths`` is None (nothing is padded)."""
    if lengths is None:
        return None
    return length_mask(lengths, steps, device=device, time_major=True).unsqueeze(-1)


class GRU(nn.GRU):
    """A multi-layer GRU: a subclass of :class:`torch.nn.GRU` whose forward runs the teaching scan below.

    Everything but ``forward`` is ``nn.GRU``'s own: the constructor and its checks, the parameters
    (``weight_ih_l0`` (3H, D), ``weight_hh_l0`` (3H, H), ``bias_ih_l0``, ``bias_hh_l0`` (3H,), then
    ``..._l0_reverse``, then ``..._l1`` whose input size is ``H * num_directions``; gate order r|z|n), their
    initialisation U(-1/sqrt(H), 1/sqrt(H)) (equal seeds give equal weights), ``state_dict``, ``all_weights``,
    ``_flat_weights``, ``flatten_parameters``, ``repr``, ``.to()`` and pickling.

    ``forward(input, hx=None) -> (output, h_n)``: ``input`` (T, B, D), (B, T, D) with ``batch_first``,
    unbatched (T, D), or a :class:`PackedSequence`; ``hx`` (num_layers * num_directions, B, H), unbatched
    (num_layers * num_directions, H), zeros when omitted. ``output`` (T, B, num_directions * H) (or batch
    first, unbatched, or packed like the input, with the input's sorting indices); ``h_n`` like ``hx``, in the
    caller's batch order.

    The time loop lives in :meth:`_scan_direction` (one layer, one direction), the one method a faster
    subclass overrides; everything else (layouts, packing, stacking, dropout) stays here. A graph compiler
    cannot keep a Python loop whose length is the input's: under ``torch.jit.trace`` and ``torch.export`` the
    forward is ``nn.GRU.forward`` (PyTorch's fused ``aten::gru``) with these same parameters, and
    ``torch.jit.script`` compiles :meth:`to_torch`'s ``nn.GRU``, so a traced or exported graph runs at any
    sequence length.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        **kwargs: object,
    ) -> None:
        super().__init__(
            input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
            device=device, dtype=dtype, **kwargs,
        )

    @property
    def num_directions(self) -> int:
        """2 for a bidirectional layer, else 1."""
        return 2 if self.bidirectional else 1

    def to_torch(self) -> nn.GRU:
        """An ``nn.GRU`` with this module's settings, training mode and Parameter objects (not copies): the
        same function computed by PyTorch's fused operator. ``torch.jit.script`` compiles it in our place."""
        with warnings.catch_warnings():  # nn.GRU's dropout warning was given when this module was built
            warnings.simplefilter("ignore")
            twin = nn.GRU(
                self.input_size, self.hidden_size, self.num_layers, self.bias, self.batch_first, self.dropout,
                self.bidirectional, device="meta",
            )
        for name in self._flat_weights_names:
            setattr(twin, name, getattr(self, name))
        twin._init_flat_weights()
        return twin.train(self.training)

    def __prepare_scriptable__(self) -> nn.GRU:
        return self.to_torch()

    def _weights(self, layer: int, direction: int) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
        suffix = f"_l{layer}" + ("_reverse" if direction == 1 else "")
        weight_ih, weight_hh = getattr(self, "weight_ih" + suffix), getattr(self, "weight_hh" + suffix)
        if not self.bias:
            return weight_ih, weight_hh, None, None
        return weight_ih, weight_hh, getattr(self, "bias_ih" + suffix), getattr(self, "bias_hh" + suffix)

    def _check_input(self, x: Tensor) -> None:
        dtype = self.weight_ih_l0.dtype
        if x.dtype != dtype and not torch.is_autocast_enabled(x.device.type):
            raise ValueError(
                f"GRU: RNN input dtype ({x.dtype}) does not match weight dtype ({dtype}). "
                f"Convert input: input.to({dtype}), or convert model: model.to({x.dtype})"
            )
        if x.size(-1) != self.input_size:
            raise RuntimeError(
                f"GRU: input.size(-1) must be equal to input_size. Expected {self.input_size}, got {x.size(-1)}"
            )

    def forward(  # type: ignore[override]
        self, input: Tensor | PackedSequence, hx: Tensor | None = None
    ) -> tuple[Tensor | PackedSequence, Tensor]:
        if torch.jit.is_tracing() or torch.compiler.is_exporting():
            return nn.GRU.forward(self, input, hx)
        packed = isinstance(input, PackedSequence)
        unbatched = False
        lengths: Tensor | None = None
        if packed:
            data, batch_sizes, sorted_indices, unsorted_indices = input
            self._check_input(data)
            # Padded, time-major, in the packed (sorted) order, with the lengths in that order.
            x, lengths = pad_packed_sequence(PackedSequence(data, batch_sizes))
        else:
            x, hx, unbatched = self._time_major(input, hx)
            sorted_indices = unsorted_indices = None
        hx = self._initial_state(x, hx, unbatched, sorted_indices)

        layer_input = x
        finals = []
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(self.num_directions):
                index = layer * self.num_directions + direction
                output, h_last = self._scan_direction(
                    layer_input, hx[index], lengths, *self._weights(layer, direction), reverse=direction == 1
                )
                outputs.append(output)
                finals.append(h_last)
            layer_input = torch.cat(outputs, dim=2) if len(outputs) > 1 else outputs[0]
            if self.training and self.dropout > 0 and layer < self.num_layers - 1:
                layer_input = F.dropout(layer_input, self.dropout, training=True)
        h_n = torch.stack(finals)

        if packed:
            data_out = pack_padded_sequence(layer_input, lengths).data
            output_packed = PackedSequence(data_out, batch_sizes, sorted_indices, unsorted_indices)
            if unsorted_indices is not None:
                h_n = h_n.index_select(1, unsorted_indices)
            return output_packed, h_n
        if unbatched:
            return layer_input.squeeze(1), h_n.squeeze(1)
        return (layer_input.transpose(0, 1) if self.batch_first else layer_input), h_n

    def _time_major(self, input: Tensor, hx: Tensor | None) -> tuple[Tensor, Tensor | None, bool]:
        """A padded input as (T, B, D), ``hx`` with a batch axis, and whether the input was unbatched."""
        if input.dim() not in (2, 3):
            raise ValueError(f"GRU: Expected input to be 2D or 3D, got {input.dim()}D instead")
        unbatched = input.dim() == 2
        if hx is not None and hx.dim() != (2 if unbatched else 3):
            kind = "unbatched 2-D" if unbatched else "batched 3-D"
            raise RuntimeError(
                f"GRU: for {kind} input, hx should also be {2 if unbatched else 3}-D but got {hx.dim()}-D tensor"
            )
        self._check_input(input)
        x = input.unsqueeze(1) if unbatched else (input.transpose(0, 1) if self.batch_first else input)
        if unbatched and hx is not None:
            hx = hx.unsqueeze(1)
        if x.size(0) == 0:
            raise RuntimeError("GRU: Expected sequence length to be larger than 0 in RNN")
        return x, hx, unbatched

    def _initial_state(self, x: Tensor, hx: Tensor | None, unbatched: bool, sorted_indices: Tensor | None) -> Tensor:
        """``hx`` checked (zeros when None), in the packed order when the input was packed."""
        expected = (self.num_layers * self.num_directions, x.size(1), self.hidden_size)
        if hx is None:
            return x.new_zeros(expected)
        if tuple(hx.shape) != expected:
            got = list(hx.shape[:1] + hx.shape[2:]) if unbatched else list(hx.shape)
            want = (expected[0], expected[2]) if unbatched else expected
            raise RuntimeError(f"GRU: Expected hidden size {want}, got {got}")
        return hx if sorted_indices is None else hx.index_select(1, sorted_indices)

    def _scan_direction(
        self,
        x: Tensor,
        h0: Tensor,
        lengths: Tensor | None,
        weight_ih: Tensor,
        weight_hh: Tensor,
        bias_ih: Tensor | None,
        bias_hh: Tensor | None,
        reverse: bool,
    ) -> tuple[Tensor, Tensor]:
        """One layer, one direction, over a time-major padded batch.

        x: (T, B, D_in); h0: (B, H); lengths: (B,) int64 CPU tensor (any order), or
        None = all T. Returns output (T, B, H), zero at steps t >= lengths[b], and h_n
        (B, H): the state after each sequence's last valid step (forward), or after
        step 0 (reverse, which reads each sequence backwards from its own last valid
        step)."""
        steps = x.size(0)
        # W_ih x_t + b_ih does not depend on h: one product for all steps, outside
        # the loop. unbind, not gi[t]: autograd's backward of each gi[t] would write a
        # full-size (T, B, 3H) zero gradient, T times over; unbind's backward stacks
        # the step gradients once.
        gi = F.linear(x, weight_ih, bias_ih).unbind(0)
        valid = _valid_mask(lengths, steps, x.device)
        padded = None if valid is None else ~valid
        h = h0
        outputs: list[Tensor] = [h0] * steps
        for t in range(steps - 1, -1, -1) if reverse else range(steps):
            h_step = gru_gates_from_projection(gi[t], h, weight_hh, bias_hh).h
            if valid is None:
                h = h_step
                outputs[t] = h
            else:
                # Reverse: the steps t >= lengths[b] come first and leave h0
                # untouched until the sequence starts.
                h = torch.where(valid[t], h_step, h)
                outputs[t] = h.masked_fill(padded[t], 0.0)
        return torch.stack(outputs), h


def to_torch_modules(model: nn.Module) -> nn.Module:
    """Replace, in place, every :class:`GRU` (FastGRU included) and :class:`~gru_lib.cell.GRUCell` inside
    ``model`` by its ``to_torch()`` twin, which holds the same Parameter objects; return ``model`` (or the twin
    when ``model`` is one of them). For tools that look modules up by their exact class, as
    ``torch.ao.quantization.quantize_dynamic`` does: ``quantize_dynamic(to_torch_modules(model), {nn.GRU})``."""
    if isinstance(model, (GRU, GRUCell)):
        return model.to_torch()
    for name, child in model.named_children():
        twin = to_torch_modules(child)
        if twin is not child:
            setattr(model, name, twin)
    return model
