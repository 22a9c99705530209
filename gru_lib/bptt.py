"""Chapter 2: the GRU cell's backward pass, derived by hand, and backpropagation through time (BPTT).

For PyTorch's reset-after cell (see :mod:`gru_lib.cell`), write the pre-activations
``g_i = W_ih x + b_ih = [g_ir | g_iz | g_in]`` and ``g_h = W_hh h + b_hh = [g_hr | g_hz | g_hn]``::

    r = sigmoid(g_ir + g_hr)    z = sigmoid(g_iz + g_hz)    n = tanh(g_in + r * g_hn)    h' = (1 - z) n + z h

Given the upstream gradient ``dh' = dL/dh'``, the chain rule, line by line (``*`` is elementwise)::

    dn        = dh' * (1 - z)                   h' depends on n through (1 - z) n
    dz        = dh' * (h - n)                   d/dz [(1 - z) n + z h] = h - n
    dh_direct = dh' * z                         the gate's copy path: h' contains z h
    da_n      = dn * (1 - n^2)                  tanh' = 1 - tanh^2; a_n = g_in + r * g_hn
    dr        = da_n * g_hn                     a_n depends on r through r * g_hn
    da_r      = dr * r (1 - r)                  sigmoid' = s (1 - s)
    da_z      = dz * z (1 - z)
    dg_i      = [da_r | da_z | da_n]            gradient on W_ih x + b_ih
    dg_h      = [da_r | da_z | da_n * r]        gradient on W_hh h + b_hh (the reset gate scales g_hn)
    dx        = dg_i W_ih                       dh = dh_direct + dg_h W_hh
    dW_ih     = dg_i^T x     dW_hh = dg_h^T h   db_ih = sum_batch dg_i     db_hh = sum_batch dg_h

Over a sequence, BPTT runs this backwards from t = T to 1: the gradient reaching ``h_{t-1}`` is the cell's
``dh`` at step t plus whatever loss term reads ``h_{t-1}`` directly (the output at step t-1); the parameter
gradients are the sums of the per-step ones, since the same weights serve every step.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor
from torch.nn import functional as F

from gru_lib.cell import GRUGates, gru_gate_trace

__all__ = ["CellGrads", "SequenceGrads", "gru_cell_backward", "gru_sequence_forward", "gru_sequence_backward"]


class CellGrads(NamedTuple):
    """Gradients of one GRU step: on its input, its previous state and its four parameters (``None`` where the
    cell has no bias)."""

    grad_x: Tensor
    grad_h: Tensor
    grad_weight_ih: Tensor
    grad_weight_hh: Tensor
    grad_bias_ih: Tensor | None
    grad_bias_hh: Tensor | None


class SequenceGrads(NamedTuple):
    """Gradients of a single-layer GRU over a sequence: ``grad_input`` (T, B, D), ``grad_h0`` (B, H), and the
    parameter gradients summed over the T steps."""

    grad_input: Tensor
    grad_h0: Tensor
    grad_weight_ih: Tensor
    grad_weight_hh: Tensor
    grad_bias_ih: Tensor | None
    grad_bias_hh: Tensor | None


def gru_cell_backward(
    grad_h_new: Tensor,
    x: Tensor,
    h: Tensor,
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Tensor | None,
    bias_hh: Tensor | None,
    gates: GRUGates,
) -> CellGrads:
    """Backward of one reset-after GRU step (the equations in the module docstring).

    ``grad_h_new`` = dL/dh' (B, H); ``x`` (B, D) and ``h`` (B, H) are the step's
    inputs; ``gates`` is what :func:`gru_lib.cell.gru_cell_gates` returned for them
    (only r, z, n are used). ``g_hn = W_hn h + b_hn`` is recomputed (one (B, H) x
    (H, H) product) rather than saved. Returns :class:`CellGrads`; the parameter
    gradients are summed over the batch.
    """
    hidden = h.shape[-1]
    r, z, n = gates.r, gates.z, gates.n
    b_hn = None if bias_hh is None else bias_hh[2 * hidden :]
    g_hn = F.linear(h, weight_hh[2 * hidden :], b_hn)

    dn = grad_h_new * (1 - z)
    dz = grad_h_new * (h - n)
    dh_direct = grad_h_new * z
    da_n = dn * (1 - n * n)
    da_r = da_n * g_hn * r * (1 - r)
    da_z = dz * z * (1 - z)
    dg_i = torch.cat([da_r, da_z, da_n], dim=-1)
    dg_h = torch.cat([da_r, da_z, da_n * r], dim=-1)

    grad_x = dg_i @ weight_ih
    grad_h = dh_direct + dg_h @ weight_hh
    # Flatten any leading (batch) dimensions: the weight gradients sum over every row.
    dg_i2, dg_h2 = dg_i.reshape(-1, 3 * hidden), dg_h.reshape(-1, 3 * hidden)
    grad_weight_ih = dg_i2.T @ x.reshape(-1, x.shape[-1])
    grad_weight_hh = dg_h2.T @ h.reshape(-1, hidden)
    grad_bias_ih = None if bias_ih is None else dg_i2.sum(0)
    grad_bias_hh = None if bias_hh is None else dg_h2.sum(0)
    return CellGrads(
        grad_x, grad_h, grad_weight_ih, grad_weight_hh, grad_bias_ih, grad_bias_hh
    )


def gru_sequence_forward(input: Tensor, h0: Tensor, weight_ih: Tensor, weight_hh: Tensor,
                         bias_ih: Tensor | None = None, bias_hh: Tensor | None = None) -> GRUGates:
    """Run a single-layer reset-after GRU over ``input`` (T, B, D) from ``h0`` (B, H), saving what the backward
    needs: a :class:`GRUGates` whose fields are stacked over time, each (T, B, H). ``gates.h`` is the layer's
    output (``gates.h[-1]`` its final state), exactly as ``nn.GRU`` returns it."""
    if input.dim() != 3 or h0.dim() != 2:
        raise ValueError(
            f"gru_sequence_forward: expected input (T, B, D) and h0 (B, H), got {tuple(input.shape)} "
            f"and {tuple(h0.shape)}"
        )
    return gru_gate_trace(input, h0, weight_ih, weight_hh, bias_ih, bias_hh)


def gru_sequence_backward(
    grad_output: Tensor | None,
    grad_h_n: Tensor | None,
    input: Tensor,
    h0: Tensor,
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Tensor | None,
    bias_hh: Tensor | None,
    gates: GRUGates,
) -> SequenceGrads:
    """BPTT for a single-layer GRU: the exact gradients of a loss that reads every
    output and the final state.

    ``grad_output`` (T, B, H) is dL/d output_t for every step (``None``: the loss
    ignores the outputs), ``grad_h_n`` (B, H) is dL/dh_T (``None``: zero); ``gates``
    is :func:`gru_sequence_forward`'s result for ``input`` (T, B, D) and ``h0``. The
    backward walks t = T..1, carrying ``dh`` = dL/dh_t (its direct term plus what
    flows back from step t+1) and summing the parameter gradients of every step.
    """
    steps = input.shape[0]
    if gates.h.shape[0] != steps:
        raise ValueError(
            f"gru_sequence_backward: gates cover {gates.h.shape[0]} steps, "
            f"input has {steps}"
        )
    dh = torch.zeros_like(h0) if grad_h_n is None else grad_h_n.clone()
    grad_input = torch.empty_like(input)
    grad_weight_ih = torch.zeros_like(weight_ih)
    grad_weight_hh = torch.zeros_like(weight_hh)
    grad_bias_ih = None if bias_ih is None else torch.zeros_like(bias_ih)
    grad_bias_hh = None if bias_hh is None else torch.zeros_like(bias_hh)
    for t in range(steps - 1, -1, -1):
        if grad_output is not None:
            dh = dh + grad_output[t]
        h_prev = h0 if t == 0 else gates.h[t - 1]
        step_gates = GRUGates(gates.r[t], gates.z[t], gates.n[t], gates.h[t])
        g = gru_cell_backward(
            dh, input[t], h_prev, weight_ih, weight_hh, bias_ih, bias_hh, step_gates
        )
        grad_input[t] = g.grad_x
        grad_weight_ih += g.grad_weight_ih
        grad_weight_hh += g.grad_weight_hh
        if grad_bias_ih is not None:
            grad_bias_ih += g.grad_bias_ih
        if grad_bias_hh is not None:
            grad_bias_hh += g.grad_bias_hh
        dh = g.grad_h
    return SequenceGrads(
        grad_input, dh, grad_weight_ih, grad_weight_hh, grad_bias_ih, grad_bias_hh
    )
