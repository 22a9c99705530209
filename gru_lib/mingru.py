"""Chapter 7: :class:`MinGRU`, the minimal GRU of Feng et al. (2024), "Were RNNs All We Needed?".

Its gates read the input only, never the previous state, so the recurrence is *linear* in ``h``::

    k_t, p_t = split(W x_t + b)                     W: ``linear.weight`` (2H, D), rows z|h~; ``linear.bias`` (2H,)
    z_t  = sigmoid(k_t)                             update gate
    h~_t = g(p_t)                                   g(x) = x + 0.5 (x >= 0), sigmoid(x) (x < 0): positive
    h_t  = (1 - z_t) * h_{t-1} + z_t * h~_t         = a_t h_{t-1} + b_t

and all T states come from one scan (:mod:`gru_lib.scan`) instead of T dependent steps.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from gru_lib.cell import check_input
from gru_lib.gemm import linear
from gru_lib.scan import mingru_scan, mingru_sequential

__all__ = ["MinGRU"]

MODES = ("parallel", "sequential")


class MinGRU(nn.Module):
    """One minGRU layer with :class:`torch.nn.GRU`'s calling convention (module docstring for the equations).

    ``m(input, h0=None) -> (output, h_n)``: ``input`` (T, B, D), (B, T, D) with ``batch_first``, or unbatched
    (T, D); ``h0`` (1, B, H) or (1, H), zeros when omitted, any sign (it enters the scan linearly); ``output``
    (T, B, H) / (B, T, H) / (T, H) and ``h_n`` (1, B, H) / (1, H).

    ``mode="parallel"`` (default): the blocked log-space scan :func:`gru_lib.scan.mingru_scan` with its
    hand-written backward; ``mode="sequential"``: the explicit time loop (the reference; autograd).
    ``chunk_size``: process time in chunks of that many steps (projection and scan), carrying the state, so
    the working memory beyond the input, the output and what autograd keeps is O(chunk_size * B * H) rather than
    O(T * B * H). ``block_size``: the block length inside the scan (default about sqrt(T)).
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        batch_first: bool = False,
        mode: str = "parallel",
        *,
        bias: bool = True,
        chunk_size: int | None = None,
        block_size: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if input_size <= 0 or hidden_size <= 0:
            raise ValueError(
                f"MinGRU: input_size and hidden_size must be positive, got {input_size} and {hidden_size}"
            )
        if mode not in MODES:
            raise ValueError(f"MinGRU: mode must be one of {', '.join(MODES)}, got {mode!r}")
        for name, value in (("chunk_size", chunk_size), ("block_size", block_size)):
            if value is not None and value < 1:
                raise ValueError(f"MinGRU: {name} must be a positive integer or None, got {value}")
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.batch_first = batch_first
        self.mode = mode
        self.chunk_size = chunk_size
        self.block_size = block_size
        self.linear = nn.Linear(input_size, 2 * hidden_size, bias=bias, device=device, dtype=dtype)

    def extra_repr(self) -> str:
        text = f"{self.input_size}, {self.hidden_size}"
        if self.batch_first:
            text += ", batch_first=True"
        if self.mode != "parallel":
            text += f", mode={self.mode!r}"
        if self.chunk_size is not None:
            text += f", chunk_size={self.chunk_size}"
        return text

    def _scan(self, x: Tensor, h: Tensor) -> Tensor:
        """States (T, B, H) for time-major ``x`` (T, B, D) from state ``h`` (B, H)."""
        y = linear(x, self.linear.weight, self.linear.bias)  # F.linear, through oneDNN on CPU (chapter 6)
        if self.mode == "sequential":
            return mingru_sequential(y, h)
        return mingru_scan(y, h, self.block_size)

    def forward(self, input: Tensor, h0: Tensor | None = None) -> tuple[Tensor, Tensor]:
        batched = check_input("MinGRU", input, (2, 3), self.input_size)
        x = input if batched else input.unsqueeze(1)
        if batched and self.batch_first:
            x = x.transpose(0, 1)
        steps, batch = x.shape[0], x.shape[1]
        if steps == 0:
            raise ValueError("MinGRU: the input has no time steps")
        expected_h = (1, batch, self.hidden_size) if batched else (1, self.hidden_size)
        if h0 is None:
            h = x.new_zeros(batch, self.hidden_size)
        elif tuple(h0.shape) != expected_h:
            raise ValueError(f"MinGRU: expected h0 of shape {expected_h}, got {tuple(h0.shape)}")
        else:
            h = h0.reshape(batch, self.hidden_size)
        chunk = self.chunk_size or steps
        if chunk >= steps:
            out = self._scan(x, h)
        elif not torch.is_grad_enabled():
            out = x.new_empty(steps, batch, self.hidden_size)
            for start in range(0, steps, chunk):
                piece = self._scan(x[start : start + chunk], h)
                out[start : start + chunk] = piece
                h = piece[-1]
                del piece
        else:
            pieces = []
            for start in range(0, steps, chunk):
                pieces.append(self._scan(x[start : start + chunk], h))
                h = pieces[-1][-1]
            out = torch.cat(pieces)
        h_n = out[-1].unsqueeze(0)
        if not batched:
            return out.squeeze(1), h_n.squeeze(1)
        return (out.transpose(0, 1) if self.batch_first else out), h_n
