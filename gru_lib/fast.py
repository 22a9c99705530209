"""Chapter 6: :class:`FastGRU`, the GRU layer of chapter 3 made fast, computing the same function.

``FastGRU`` subclasses :class:`gru_lib.layer.GRU` and overrides only its time loop, ``_scan_direction``, so it
has ``nn.GRU``'s constructor, forward (layers, directions, ``batch_first``, ``h0``, packed input) and
``state_dict``. One direction of one layer (time-major, weights stacked r|z|n) computes::

    GI = X W_ih^T + b_ih                          all T steps in one (T*B, D) x (D, 3H) product
    per step t: gh = h W_hh^T                     one (B, H) x (H, 3H) product into a preallocated buffer
                r, z = sigmoid(GI_rz[t] + gh_rz + b_hrz)
                n = tanh(GI_n[t] + r * (gh_n + b_hn)),   h' = n + z * (h - n)     one fused pass

and backward is a hand-written backpropagation through time (a :class:`torch.autograd.Function`): per step
one fused pass gives the pre-activation gradients ``G[t]`` and ``dh_{t-1} = z * dh' + G_h[t] W_hh``; then the
weight gradients of all steps are single large products, ``dW_hh = G_h^T [h_0; h_1..h_{T-1}]`` as one
(3H x T*B) @ (T*B x H) product, ``dW_ih = G_i^T X`` and ``dX = G_i W_ih``.

Two implementations of that contract, with the same arguments and results:

- ``gru_lib/csrc/fast_gru.cpp``, a C++ extension built on first use (:mod:`gru_lib.native`) for CPU tensors:
  the time loop and the fused, vectorised gate arithmetic in C++, the matrix products through PyTorch's oneDNN
  operators (``W_hh`` packed once per call; on this AMD CPU about twice MKL's rate), or through ATen for
  float64, without oneDNN, or with ``torch.backends.mkldnn.enabled = False``; its large buffers come from a
  reuse pool (``csrc/buffers.h``);
- :data:`_TORCH_IMPL`, the same algorithm in PyTorch operations: used on other devices (CUDA), where no
  compiler is available, or when the environment sets ``GRU_LIB_NO_EXTENSION=1``.

Under autocast (``torch.autocast``, bf16 or fp16) the matrix products run in the autocast dtype while the
gate arithmetic, states and gradients stay in the parameters' dtype, as autocast does for ``F.linear``.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Any, Callable

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from gru_lib import native
from gru_lib.layer import GRU, _valid_mask
from gru_lib.lengths import reverse_within_lengths_index

__all__ = ["FastGRU", "fast_gru_scan", "extension", "extension_error", "backend_name"]

_STEM = "fast_gru"


def extension() -> ModuleType | None:
    """The compiled ``csrc/fast_gru.cpp``, built on first use (:func:`gru_lib.native.load`); ``None`` when
    ``GRU_LIB_NO_EXTENSION=1`` or when the build failed (the reason is in :func:`extension_error`)."""
    return native.load(_STEM)


def extension_error() -> str | None:
    """Why the C++ extension is not in use (None when it loaded or was not tried yet)."""
    return native.load_error(_STEM)


def backend_name(device: torch.device | str = "cpu") -> str:
    """``"cpp"`` when FastGRU runs its C++ loop on tensors of this device, else ``"torch"``."""
    return "cpp" if torch.device(device).type == "cpu" and extension() is not None else "torch"


# ----------------------------------------------------------------------------------------------------------
# The pure-PyTorch implementation: the same contract as the C++ ``forward``/``backward``.


def _mm(a: Tensor, b: Tensor, mm_dtype: torch.dtype) -> Tensor:
    """``a @ b`` with the product in ``mm_dtype`` and the result in ``a``'s dtype."""
    if mm_dtype == a.dtype:
        return a @ b
    return (a.to(mm_dtype) @ b.to(mm_dtype)).to(a.dtype)


def _mm_dtype(name: str, own: torch.dtype) -> torch.dtype:
    return own if not name else getattr(torch, name)


def _final_state(out: Tensor, h0: Tensor, lengths: Tensor | None) -> Tensor:
    if lengths is None:
        return out[-1].clone()
    last = (lengths.to(out.device) - 1).clamp(min=0)
    h_n = out.gather(0, last.view(1, -1, 1).expand(1, out.size(1), out.size(2)))[0]
    return torch.where((lengths.to(out.device) > 0).unsqueeze(-1), h_n, h0)


def _torch_forward(x: Tensor, h0: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor | None, b_hh: Tensor | None,
                   lengths: Tensor | None, training: bool, mm_name: str) -> list[Tensor | None]:
    steps, batch, inputs = x.shape
    hidden = h0.size(1)
    dt = _mm_dtype(mm_name, x.dtype)
    gi = _mm(x.reshape(steps * batch, inputs), w_ih.t(), dt).view(steps, batch, 3 * hidden)
    if b_ih is not None:
        gi = gi + b_ih
    bhh = b_hh if b_hh is not None else x.new_zeros(3 * hidden)
    valid = _valid_mask(lengths, steps, x.device)
    padded = None if valid is None else ~valid
    out = x.new_empty(steps, batch, hidden)
    saved = x.new_empty(steps, batch, 4 * hidden) if training else None
    w_hh_t = w_hh.t().to(dt)
    for t in range(steps):
        hp = h0 if t == 0 else out[t - 1]
        gh = _mm(hp, w_hh_t, dt) + bhh
        i_r, i_z, i_n = gi[t].chunk(3, dim=1)
        h_r, h_z, h_n = gh.chunk(3, dim=1)
        r = torch.sigmoid(i_r + h_r)
        z = torch.sigmoid(i_z + h_z)
        n = torch.tanh(i_n + r * h_n)
        h = n + z * (hp - n)
        out[t] = h if padded is None else h.masked_fill(padded[t], 0.0)
        if saved is not None:
            torch.cat([r, z, n, h_n], dim=1, out=saved[t])
    return [out, _final_state(out, h0, lengths), saved]


def _torch_backward(
    dout: Tensor,
    dh_n: Tensor,
    x: Tensor,
    h0: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    out: Tensor,
    saved: Tensor,
    lengths: Tensor | None,
    mm_name: str,
) -> list[Tensor]:
    steps, batch, inputs = x.shape
    hidden = h0.size(1)
    dt = _mm_dtype(mm_name, x.dtype)
    valid = _valid_mask(lengths, steps, x.device)
    padded = None if valid is None else ~valid
    grads = x.new_empty(steps, batch, 4 * hidden)  # [da_r, da_z, da_n * r, da_n] per step
    dh = dh_n.clone()
    w_hh_low = w_hh.to(dt)
    for t in range(steps - 1, -1, -1):
        hp = h0 if t == 0 else out[t - 1]
        r, z, n, g = saved[t].chunk(4, dim=1)
        dh_total = dh + dout[t]
        da_n = dh_total * (1 - z) * (1 - n * n)
        da_z = dh_total * (hp - n) * z * (1 - z)
        da_r = da_n * g * r * (1 - r)
        grad_t = torch.cat([da_r, da_z, da_n * r, da_n], dim=1, out=grads[t])
        if padded is None:
            dh = dh_total * z
        else:
            grad_t.masked_fill_(padded[t], 0.0)
            dh = torch.where(valid[t], dh_total * z, dh)
        dh = dh + _mm(grad_t[:, : 3 * hidden], w_hh_low, dt)
    flat = grads.view(steps * batch, 4 * hidden)
    g_h = flat[:, : 3 * hidden]
    g_i = torch.cat([flat[:, : 2 * hidden], flat[:, 3 * hidden :]], dim=1)
    prev = torch.cat([h0.unsqueeze(0), out[:-1]]).view(steps * batch, hidden)
    flat_x = x.reshape(steps * batch, inputs)
    d_w_hh = _mm(g_h.t(), prev, dt)
    d_w_ih = _mm(g_i.t(), flat_x, dt)
    dx = _mm(g_i, w_ih, dt).view(steps, batch, inputs)
    return [dx, dh, d_w_ih, d_w_hh, g_i.sum(0), g_h.sum(0)]


@dataclass(frozen=True)
class _Impl:
    forward: Callable[..., Any]
    backward: Callable[..., Any]


_TORCH_IMPL = _Impl(_torch_forward, _torch_backward)


def _impl_for(x: Tensor) -> _Impl:
    module = extension() if x.device.type == "cpu" else None
    return _Impl(module.forward, module.backward) if module is not None else _TORCH_IMPL


# ----------------------------------------------------------------------------------------------------------


class _ScanFunction(torch.autograd.Function):
    """One direction of one layer, forward time order, masked by ``lengths``; returns (output, h_n)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: Tensor,
        h0: Tensor,
        w_ih: Tensor,
        w_hh: Tensor,
        b_ih: Tensor | None,
        b_hh: Tensor | None,
        lengths: Tensor | None,
        mm_name: str,
        impl: _Impl,
        training: bool,
    ) -> tuple[Tensor, Tensor]:
        out, h_n, saved = impl.forward(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, training, mm_name)
        if training:
            ctx.save_for_backward(x, h0, w_ih, w_hh, out, saved)
            ctx.lengths, ctx.mm_name, ctx.impl = lengths, mm_name, impl
            ctx.has_bias = (b_ih is not None, b_hh is not None)
        return out, h_n

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, d_out: Tensor, d_h_n: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        x, h0, w_ih, w_hh, out, saved = ctx.saved_tensors
        with torch.autocast(x.device.type, enabled=False):
            dx, dh0, d_w_ih, d_w_hh, d_b_ih, d_b_hh = ctx.impl.backward(
                d_out, d_h_n, x, h0, w_ih, w_hh, out, saved, ctx.lengths, ctx.mm_name
            )
        has_ih, has_hh = ctx.has_bias
        grads = (dx, dh0, d_w_ih, d_w_hh, d_b_ih if has_ih else None, d_b_hh if has_hh else None)
        return grads + (None, None, None, None)


def fast_gru_scan(x: Tensor, h0: Tensor, lengths: Tensor | None, weight_ih: Tensor, weight_hh: Tensor,
                  bias_ih: Tensor | None, bias_hh: Tensor | None, reverse: bool = False) -> tuple[Tensor, Tensor]:
    """:meth:`gru_lib.layer.GRU._scan_direction`'s contract, fast: x (T, B, D) time-major padded, h0 (B, H),
    lengths (B,) int64 on the CPU or None; returns output (T, B, H) (zero at t >= lengths[b]) and h_n (B, H),
    the state after each sequence's last valid step (for ``reverse``: after its step 0)."""
    steps = x.size(0)
    if lengths is not None and bool((lengths >= steps).all()):
        lengths = None  # nothing is padded: skip the masks
    if lengths is not None:
        lengths = lengths.to(device="cpu", dtype=torch.int64).clamp(max=steps).contiguous()
    device_type = x.device.type
    mm_name = ""
    if torch.is_autocast_enabled(device_type) and weight_hh.dtype == torch.float32:
        mm_name = str(torch.get_autocast_dtype(device_type)).removeprefix("torch.")
    if x.dtype != weight_hh.dtype:  # autocast may hand us a low-precision input
        x = x.to(weight_hh.dtype)
    index = None
    if reverse:
        if lengths is None:
            x = x.flip(0)
        else:
            index = reverse_within_lengths_index(lengths, steps, device=x.device, time_major=True)
            x = x.gather(0, index.unsqueeze(-1).expand_as(x))
    # Save the gates for backward only when a gradient will be asked for (not under no_grad / inference).
    inputs = (x, h0, weight_ih, weight_hh, bias_ih, bias_hh)
    training = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs)
    with torch.autocast(device_type, enabled=False):
        out, h_n = _ScanFunction.apply(*inputs, lengths, mm_name, _impl_for(x), training)
    if reverse:
        out = out.flip(0) if index is None else out.gather(0, index.unsqueeze(-1).expand_as(out))
    return out, h_n


class FastGRU(GRU):
    """A drop-in for :class:`torch.nn.GRU` (same constructor, forward and ``state_dict``) whose time loop is
    :func:`fast_gru_scan`: the C++ extension on CPU, the PyTorch implementation of the same algorithm elsewhere.
    Outputs and gradients match ``nn.GRU`` to float32 rounding (tests: within 1e-5)."""

    # GRU.forward calls _scan_direction(x, h0, lengths, weight_ih, weight_hh, bias_ih, bias_hh, reverse=...):
    # fast_gru_scan takes exactly these arguments.
    _scan_direction = staticmethod(fast_gru_scan)
