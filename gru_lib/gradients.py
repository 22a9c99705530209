"""Chapter 2: vanishing and exploding gradients, measured.

For a loss ``L`` that reads only the last state ``h_T``, backpropagation gives
``dL/dh_t = (dh_{t+1}/dh_t)^T ... (dh_T/dh_{T-1})^T dL/dh_T``: a product of T - t Jacobians. For a tanh RNN
``h' = tanh(W_ih x + W_hh h + b)`` each Jacobian is ``diag(1 - h'^2) W_hh``; at the standard initialisation
U(-1/sqrt(H), 1/sqrt(H)) the spectral radius of ``W_hh`` is about ``1/sqrt(3)`` and the product shrinks
geometrically. A GRU's Jacobian ``dh'/dh = diag(z) + (terms through n, z and r)`` contains ``diag(z)``, a
near-identity path when ``z`` is near 1; but nothing bounds the other terms, so large recurrent weights can make
the product grow instead (:func:`make_gru_explosive_`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["hidden_state_gradient_norms", "per_step_factor", "make_gru_explosive_"]


def hidden_state_gradient_norms(
    cell: Callable[[Tensor, Tensor], Tensor],
    inputs: Tensor,
    h0: Tensor | None = None,
    readout: Tensor | None = None,
) -> Tensor:
    """``||dL/dh_t||`` for t = 0..T, where the cell runs over ``inputs`` (T, B, D) from ``h0`` (B, H) and
    ``L = sum_b <readout, h_T[b]>`` depends on the last state only.

    ``cell(x_t, h) -> h'`` is any one-step recurrent module with a ``hidden_size`` (``nn.RNNCell``,
    ``nn.GRUCell``, :class:`gru_lib.GRUCell`); ``h0`` defaults to zeros and ``readout`` (H,) to the unit vector
    ``1/sqrt(H)``, so ``||dL/dh_T|| = sqrt(B)``. The gradients are exact: autograd, with ``retain_grad`` on every
    state. Returns a (T+1,) tensor (float64 on the CPU) of the Frobenius norms over the batch; the cell's
    parameters receive gradients as a side effect.
    """
    if inputs.dim() != 3:
        raise ValueError(f"hidden_state_gradient_norms: expected inputs (T, B, D), got {tuple(inputs.shape)}")
    batch, hidden = inputs.shape[1], cell.hidden_size
    if h0 is None:
        h0 = inputs.new_zeros(batch, hidden)
    if readout is None:
        readout = inputs.new_full((hidden,), 1.0 / math.sqrt(hidden))
    h = h0.detach().clone().requires_grad_(True)
    states = [h]
    for x_t in inputs:
        h = cell(x_t, h)
        h.retain_grad()
        states.append(h)
    (h * readout).sum().backward()
    return torch.stack([torch.linalg.vector_norm(s.grad) for s in states]).detach().to("cpu", torch.float64)


def per_step_factor(norms: Tensor) -> float:
    """The geometric-mean factor by which the gradient norm changes per step back in time:
    ``(||dL/dh_0|| / ||dL/dh_T||) ** (1/T)`` (below 1: vanishing; above 1: exploding)."""
    steps = norms.shape[0] - 1
    if steps < 1:
        raise ValueError("per_step_factor: need the norms of at least two states")
    return math.exp((math.log(norms[0].item()) - math.log(norms[-1].item())) / steps)


def make_gru_explosive_(weight_hh: Tensor, bias_hh: Tensor, *, gain: float = 6.0, update_bias: float = -5.0) -> None:
    """Turn a standard-initialised GRU's recurrence into one whose gradients explode, in place.

    Multiplies every recurrent weight (``W_hh``, all of r|z|n) by ``gain`` and sets the update gate's recurrent
    bias ``b_hz`` to ``update_bias``. With ``update_bias = -5`` the update gate stays near ``z = 0``: every step
    takes the candidate (``h' ~ n``) and the GRU behaves like a tanh RNN whose recurrent matrix is ``r * W_hn``.
    Scaling ``W_hn`` by ``gain`` scales its spectral radius by the same factor, but the step Jacobian also
    carries the gates and the tanh slope ``(1 - z)(1 - n^2) r``, which shrink it: chapter 2 measures its radius
    (above 1 at ``gain = 6``) and the resulting growth of ``||dL/dh_0||`` per step, exponential in T. Works on ``GRUCell`` (``weight_hh``, ``bias_hh``) and
    ``nn.GRU``/``gru_lib.GRU`` (``weight_hh_l0``, ``bias_hh_l0``) parameters alike.
    """
    hidden = weight_hh.shape[1]
    if weight_hh.shape[0] != 3 * hidden or bias_hh.shape != (3 * hidden,):
        raise ValueError(
            f"make_gru_explosive_: expected weight_hh (3H, H) and bias_hh (3H,), got {tuple(weight_hh.shape)} "
            f"and {tuple(bias_hh.shape)}"
        )
    with torch.no_grad():
        weight_hh.mul_(gain)
        bias_hh[hidden : 2 * hidden].fill_(update_bias)
