"""Chapter 1: the GRU cell, written from its equations.

PyTorch (and cuDNN) compute, for input ``x`` and previous state ``h``, with weights stacked in the order r|z|n::

    r  = sigmoid(W_ir x + b_ir + W_hr h + b_hr)          reset gate
    z  = sigmoid(W_iz x + b_iz + W_hz h + b_hz)          update gate
    n  = tanh(W_in x + b_in + r * (W_hn h + b_hn))       candidate state ("reset-after")
    h' = (1 - z) * n + z * h                             new state

Cho et al. (2014), and d2l, apply the reset gate *before* the recurrent matrix product::

    n  = tanh(W_in x + b_in + W_hn (r * h) + b_hn)       candidate state ("reset-before")

The two are different functions of the same parameters; ``reset_after=False`` selects Cho's form.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = ["GRUGates", "gru_cell_gates", "gru_gates_from_projection", "gru_gate_trace", "gru_cell", "GRUCell",
           "GRUCellShapeError"]


class GRUGates(NamedTuple):
    """Everything one GRU step computes: reset gate, update gate, candidate state and new state."""

    r: Tensor
    z: Tensor
    n: Tensor
    h: Tensor


def gru_cell_gates(
    x: Tensor,
    h: Tensor,
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Tensor | None = None,
    bias_hh: Tensor | None = None,
    *,
    reset_after: bool = True,
) -> GRUGates:
    """One GRU step, returning the gates too.

    ``x``: (..., D), ``h``: (..., H); weights (3H, D) and (3H, H), gate rows r|z|n.
    """
    gi = F.linear(x, weight_ih, bias_ih)
    return gru_gates_from_projection(gi, h, weight_hh, bias_hh, reset_after=reset_after)


def gru_gates_from_projection(
    gi: Tensor,
    h: Tensor,
    weight_hh: Tensor,
    bias_hh: Tensor | None = None,
    *,
    reset_after: bool = True,
) -> GRUGates:
    """One GRU step from the input's projection ``gi = W_ih x + b_ih`` (..., 3H).

    The input term does not depend on ``h``, so a layer computes it for every time
    step in one matrix product and only the recurrent half, below, stays inside the
    loop over time.
    """
    gi_r, gi_z, gi_n = gi.chunk(3, dim=-1)
    if reset_after:
        gh_r, gh_z, gh_n = F.linear(h, weight_hh, bias_hh).chunk(3, dim=-1)
        r = torch.sigmoid(gi_r + gh_r)
        z = torch.sigmoid(gi_z + gh_z)
        n = torch.tanh(gi_n + r * gh_n)
    else:
        hidden = h.shape[-1]
        # r and z use the first 2H rows of W_hh as above; only the candidate differs.
        b_rz = None if bias_hh is None else bias_hh[: 2 * hidden]
        gh_r, gh_z = F.linear(h, weight_hh[: 2 * hidden], b_rz).chunk(2, dim=-1)
        r = torch.sigmoid(gi_r + gh_r)
        z = torch.sigmoid(gi_z + gh_z)
        b_n = None if bias_hh is None else bias_hh[2 * hidden :]
        n = torch.tanh(gi_n + F.linear(r * h, weight_hh[2 * hidden :], b_n))
    h_new = (1 - z) * n + z * h
    return GRUGates(r, z, n, h_new)


def gru_gate_trace(input: Tensor, h0: Tensor, weight_ih: Tensor, weight_hh: Tensor, bias_ih: Tensor | None = None,
                   bias_hh: Tensor | None = None) -> GRUGates:
    """Run the cell over ``input`` (T, ..., D) from ``h0`` (..., H), keeping every step's gates: a
    :class:`GRUGates` whose fields are stacked over time, each (T, ..., H); ``h`` is the layer's output."""
    steps: list[GRUGates] = []
    h = h0
    for x_t in input:
        step = gru_cell_gates(x_t, h, weight_ih, weight_hh, bias_ih, bias_hh)
        steps.append(step)
        h = step.h
    return GRUGates(*(torch.stack(field) for field in zip(*steps)))


def check_input(owner: str, input: Tensor, dims: tuple[int, int], input_size: int) -> bool:
    """Check that ``input`` has ``dims[0]`` (unbatched) or ``dims[1]`` (batched) dimensions and ``input_size``
    features; return whether it is batched. ``owner`` names the module in the ValueError."""
    if input.dim() not in dims:
        raise ValueError(f"{owner}: expected input to be {dims[0]}D or {dims[1]}D, got {input.dim()}D instead "
                         f"({dims[0]}D: one unbatched sequence)")
    if input.shape[-1] != input_size:
        raise ValueError(f"{owner}: input has inconsistent input_size: got {input.shape[-1]}, expected {input_size}")
    return input.dim() == dims[1]


def gru_cell(
    x: Tensor, h: Tensor, weight_ih: Tensor, weight_hh: Tensor,
    bias_ih: Tensor | None = None, bias_hh: Tensor | None = None,
    *, reset_after: bool = True,
) -> Tensor:
    """One GRU step: the new state ``h'`` (the module docstring has the equations)."""
    gates = gru_cell_gates(
        x, h, weight_ih, weight_hh, bias_ih, bias_hh, reset_after=reset_after
    )
    return gates.h


class GRUCellShapeError(RuntimeError):
    """An ``input`` or ``hx`` whose sizes :class:`GRUCell` cannot take: a RuntimeError, as ``nn.GRUCell`` raises
    for these."""


class GRUCell(nn.GRUCell):
    """A drop-in for :class:`torch.nn.GRUCell` (a subclass), computed from the equations in this module's docstring.

    ``nn.GRUCell``'s constructor, parameters (``weight_ih`` (3H, D), ``weight_hh`` (3H, H), ``bias_ih`` and
    ``bias_hh`` (3H,), gate order r|z|n), initialisation U(-1/sqrt(H), 1/sqrt(H)) and ``state_dict``; the same
    forward: ``input`` (B, D) or unbatched (D,), ``hx`` (B, H) or (H,), zeros when omitted; returns h'.

    ``reset_after=False`` gives the reset-before candidate of Cho et al. (2014); it loads the same state_dict
    but computes a different function, so it matches ``nn.GRUCell`` only when ``W_hn`` and ``b_hn`` vanish.
    With the default ``reset_after=True``, ``torch.jit.script`` compiles :meth:`to_torch`'s ``nn.GRUCell`` and
    ``torch.jit.trace`` / ``torch.export`` record ``nn.GRUCell.forward`` (``aten::gru_cell``), the same function
    with the same parameters.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        reset_after: bool = True,
    ) -> None:
        super().__init__(input_size, hidden_size, bias, device=device, dtype=dtype)
        self.reset_after = reset_after

    def extra_repr(self) -> str:
        return super().extra_repr() + ("" if self.reset_after else ", reset_after=False")

    def to_torch(self) -> nn.GRUCell:
        """An ``nn.GRUCell`` with this cell's sizes, training mode and Parameter objects (not copies); only for
        ``reset_after=True``, the one form ``nn.GRUCell`` computes."""
        if not self.reset_after:
            raise ValueError("GRUCell.to_torch: nn.GRUCell computes only reset_after=True; this cell is reset-before")
        twin = nn.GRUCell(self.input_size, self.hidden_size, self.bias, device="meta")
        for name, parameter in self.named_parameters(recurse=False):
            setattr(twin, name, parameter)
        return twin.train(self.training)

    def __prepare_scriptable__(self) -> nn.GRUCell:
        if not self.reset_after:
            raise RuntimeError(
                "GRUCell(reset_after=False): TorchScript compiles nn.GRUCell, which is reset-after only; "
                "record this cell with torch.jit.trace or torch.export instead"
            )
        return self.to_torch()

    def forward(self, input: Tensor, hx: Tensor | None = None) -> Tensor:
        if self.reset_after and (torch.jit.is_tracing() or torch.compiler.is_exporting()):
            return nn.GRUCell.forward(self, input, hx)
        if input.dim() not in (1, 2):
            raise ValueError(f"GRUCell: Expected input to be 1D or 2D, got {input.dim()}D instead")
        if hx is not None and hx.dim() not in (1, 2):
            raise ValueError(f"GRUCell: Expected hidden to be 1D or 2D, got {hx.dim()}D instead")
        if input.shape[-1] != self.input_size:
            raise GRUCellShapeError(
                f"GRUCell: input has inconsistent input_size: got {input.shape[-1]}, expected {self.input_size}"
            )
        expected_h = (*input.shape[:-1], self.hidden_size)
        if hx is None:
            hx = input.new_zeros(expected_h)
        elif tuple(hx.shape) != expected_h:
            raise GRUCellShapeError(f"GRUCell: expected hx of shape {expected_h}, got {tuple(hx.shape)}")
        return gru_cell(
            input,
            hx,
            self.weight_ih,
            self.weight_hh,
            self.bias_ih,
            self.bias_hh,
            reset_after=self.reset_after,
        )
