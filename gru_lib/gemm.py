"""oneDNN's matrix products for the layers written in Python (minGRU's projection); Appendix A1 compares them.

``torch.mm`` and ``F.linear`` on x86 CPUs call MKL. oneDNN, which PyTorch also ships (``torch.ops.mkldnn``),
is a second library with its own kernels (``ONEDNN_VERBOSE=1`` names the instruction set it picked). Which one
multiplies faster depends on the processor: on one AMD EPYC with AVX-512 oneDNN ran about twice MKL's rate, on
an Intel Xeon with AMX MKL was faster in fp32 (``python -m gru_lib bench`` measures both on the GRU's own
products; Appendix A1 does it in the book).
:func:`linear` is ``F.linear`` computed through oneDNN where that applies, with a hand-written backward:

    y = x W^T + b            mkldnn::_linear_pointwise(x, W, b)
    dx = dy W                mkldnn::_linear_pointwise(dy, W^T)
    dW = dy^T x              oneDNN wants the contracted axis contiguous in its left operand, so this is
                             sum over row chunks of (x_c^T dy_c)^T, each x_c^T a small transposed copy
    db = sum of dy's rows

It applies on CPU, for float32 and bfloat16 (bfloat16 where oneDNN has a kernel for it on this CPU), with
``torch.backends.mkldnn`` enabled and outside autocast; everywhere else :func:`linear` is ``F.linear``. Results differ from MKL's by float rounding only.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable
from torch.nn import functional as F

__all__ = ["linear", "uses_onednn", "onednn_available", "onednn_linear", "onednn_bf16_works"]

# Rows per chunk of the weight gradient: the transposed copy of one chunk of x stays in the L2 cache.
_WEIGHT_GRAD_CHUNK = 1024


def onednn_available(device: torch.device | str = "cpu") -> bool:
    """Whether PyTorch's oneDNN operators can multiply tensors of this device (CPU, in builds with oneDNN)."""
    return torch.device(device).type == "cpu" and torch.backends.mkldnn.is_available()


@functools.cache
def onednn_bf16_works() -> bool:
    """Whether oneDNN multiplies bfloat16 on this CPU. It has no bf16 kernel without AVX-512 (on most laptops,
    or with ``ONEDNN_MAX_CPU_ISA`` set below it) and then refuses to create the product: asked once, 1 x 1."""
    if not torch.backends.mkldnn.is_available():
        return False
    one = torch.ones(1, 1, dtype=torch.bfloat16)
    try:
        onednn_linear(one, one)
    except RuntimeError:
        return False
    return True


def uses_onednn(x: Tensor, weight: Tensor) -> bool:
    """Whether :func:`linear` computes ``x W^T`` through oneDNN (the module docstring lists when)."""
    return (
        onednn_available(x.device)
        and x.dtype in (torch.float32, torch.bfloat16)
        and weight.dtype == x.dtype
        and torch.backends.mkldnn.enabled
        and not torch.is_autocast_enabled("cpu")
        and (x.dtype != torch.bfloat16 or onednn_bf16_works())
    )


def onednn_linear(a: Tensor, w: Tensor, bias: Tensor | None = None) -> Tensor:
    """``a @ w^T (+ bias)`` by oneDNN: a (M, K), w (N, K) with any strides, or packed by
    ``torch.ops.mkldnn._reorder_linear_weight``."""
    return torch.ops.mkldnn._linear_pointwise(a.contiguous(), w, bias, "none", [], "")


def _weight_grad(dy: Tensor, x: Tensor) -> Tensor:
    """``dy^T x`` (N, K) for dy (M, N) and x (M, K), M the long axis (module docstring)."""
    if x.shape[0] <= _WEIGHT_GRAD_CHUNK:
        return dy.t() @ x
    total = None
    for start in range(0, x.shape[0], _WEIGHT_GRAD_CHUNK):
        rows = slice(start, start + _WEIGHT_GRAD_CHUNK)
        part = onednn_linear(x[rows].t().contiguous(), dy[rows].t())  # (K, N)
        total = part if total is None else total.add_(part)
    assert total is not None
    return total.t().contiguous()


class _OneDnnLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return onednn_linear(x, weight, bias)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, dy: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        x, weight = ctx.saved_tensors
        dy = dy.contiguous()
        dx = onednn_linear(dy, weight.t()) if ctx.needs_input_grad[0] else None
        dw = _weight_grad(dy, x) if ctx.needs_input_grad[1] else None
        db = dy.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return dx, dw, db


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``F.linear(x, weight, bias)``: x (..., in), weight (out, in), bias (out,) or None; through oneDNN where
    :func:`uses_onednn` says so, else ``F.linear`` itself."""
    if not uses_onednn(x, weight) or x.dim() < 1 or x.numel() == 0:
        return F.linear(x, weight, bias)
    flat = x.reshape(-1, x.shape[-1]).contiguous()
    return _OneDnnLinear.apply(flat, weight, bias).view(*x.shape[:-1], weight.shape[0])
