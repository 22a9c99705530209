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
  operators (``W_hh`` packed once per call; faster or slower than MKL depending on the processor, see Appendix
  A1), or through ATen for
  float64, without oneDNN, or with ``torch.backends.mkldnn.enabled = False``; its large buffers come from a
  reuse pool (``csrc/buffers.h``);
- :data:`_TORCH_IMPL`, the same algorithm in PyTorch operations: used on other non-CUDA devices, where no
  compiler is available, or when the environment sets ``GRU_LIB_NO_EXTENSION=1``.

On CUDA, ``FastGRU.forward`` is ``nn.GRU``'s own (:func:`runs_cudnn`): cuDNN's fused GRU kernel, which no
per-step loop launched from Python comes near on a GPU.

Without gradients (under ``torch.no_grad`` or ``inference_mode``, or with nothing that requires grad), float32
on the CPU takes a third path, :mod:`gru_lib.inference`: the whole loop in one C++ call with its own product
``h W_hh^T`` fused with the gates (Appendix A1 times it against ONNX Runtime and OpenVINO).

Under autocast (``torch.autocast``, bf16 or fp16) the matrix products run in the autocast dtype while the
gate arithmetic, states and gradients stay in the parameters' dtype, as autocast does for ``F.linear``.
The C++ loop computes in float32 and float64; float16 and bfloat16 parameters take the PyTorch implementation.

Where ``nn.GRU`` goes, FastGRU follows: the autograd Function has a ``vmap`` rule (``torch.func.vmap``, per-sample
gradients) and a ``jvp`` (forward mode, ``jacfwd``, ``hessian``), and when its backward must itself be
differentiable (``create_graph=True``: gradient penalties, Hessian-vector products) or runs under a torch.func
transform, the gradients come from :func:`_differentiable_scan`, the same function in out-of-place PyTorch
operations, differentiated by autograd; the ordinary backward keeps the hand-written BPTT above.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Any, Callable

import torch
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence

from gru_lib import inference, native
from gru_lib.layer import GRU, _valid_mask
from gru_lib.lengths import reverse_within_lengths_index

__all__ = ["FastGRU", "fast_gru_scan", "extension", "extension_error", "backend_name", "runs_cudnn"]

_STEM = "fast_gru"


def extension() -> ModuleType | None:
    """The compiled ``csrc/fast_gru.cpp``, built on first use (:func:`gru_lib.native.load`); ``None`` when
    ``GRU_LIB_NO_EXTENSION=1`` or when the build failed (the reason is in :func:`extension_error`)."""
    return native.load(_STEM)


def extension_error() -> str | None:
    """Why the C++ extension is not in use (None when it loaded or was not tried yet)."""
    return native.load_error(_STEM)


def backend_name(device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> str:
    """``"cpp"`` when FastGRU runs its C++ loop on tensors of this device and dtype (float32 or float64 on the
    CPU, with the extension built), else ``"torch"``."""
    on_cpu = torch.device(device).type == "cpu" and dtype in _CPP_DTYPES
    return "cpp" if on_cpu and extension() is not None else "torch"


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


# The dtypes the C++ loop computes in; float16 and bfloat16 parameters take the PyTorch implementation.
_CPP_DTYPES = (torch.float32, torch.float64)


def _impl_for(x: Tensor) -> _Impl:
    module = extension() if x.device.type == "cpu" and x.dtype in _CPP_DTYPES else None
    return _Impl(module.forward, module.backward) if module is not None else _TORCH_IMPL


# ----------------------------------------------------------------------------------------------------------
# The derivative path: the same function in out-of-place PyTorch operations, for what the hand-written backward
# cannot do (a backward that is itself differentiated, or one that runs under a torch.func transform).


def _differentiable_scan(x: Tensor, h0: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor | None,
                         b_hh: Tensor | None, lengths: Tensor | None, mm_name: str) -> tuple[Tensor, Tensor]:
    """The scan's (output, h_n) without ``out=`` or in-place writes, so that autograd and torch.func
    differentiate it to any order and ``vmap`` runs it; equal to the fast forward up to rounding
    (``h' = lerp(n, h, z) = n + z (h - n)``; past a sequence's end the state is held and the output is 0)."""
    hidden = h0.size(-1)
    dt = _mm_dtype(mm_name, x.dtype)
    gi = _mm(x, w_ih.t(), dt)
    if b_ih is not None:
        gi = gi + b_ih
    valid = _valid_mask(lengths, x.size(0), x.device)
    h, outputs = h0, []
    for t, gi_t in enumerate(gi.unbind(0)):
        gh = _mm(h, w_hh.t(), dt)
        if b_hh is not None:
            gh = gh + b_hh
        r, z = torch.sigmoid(gi_t[..., : 2 * hidden] + gh[..., : 2 * hidden]).chunk(2, dim=-1)
        step = torch.lerp(torch.tanh(gi_t[..., 2 * hidden :] + r * gh[..., 2 * hidden :]), h, z)
        h = step if valid is None else torch.where(valid[t], step, h)
        outputs.append(h if valid is None else torch.where(valid[t], h, 0.0))
    return torch.stack(outputs), h


def _differentiable_backward(ctx: Any, d_out: Tensor, d_h_n: Tensor) -> tuple[Tensor | None, ...]:
    """The vector-Jacobian product of :func:`_differentiable_scan` at the saved inputs: the gradients of
    (x, h0, w_ih, w_hh, b_ih, b_hh), themselves differentiable (torch.func.vjp composes with autograd)."""
    primals = ctx.saved_tensors[:6]
    bias = [b is not None for b in primals[4:]]
    _, vjp = torch.func.vjp(_scan_of(bias, ctx), *(p for p in primals if p is not None))
    grads = iter(vjp((d_out, d_h_n)))
    return tuple(next(grads) if p is not None else None for p in primals)


def _scan_of(bias: list[bool], ctx: Any) -> Callable[..., tuple[Tensor, Tensor]]:
    """:func:`_differentiable_scan` as a function of the tensors only (x, h0, w_ih, w_hh, then the biases
    that are present, as ``bias`` says), with ``ctx``'s lengths and product dtype."""

    def scan(x: Tensor, h0: Tensor, w_ih: Tensor, w_hh: Tensor, *biases: Tensor) -> tuple[Tensor, Tensor]:
        given = iter(biases)
        b_ih, b_hh = (next(given) if present else None for present in bias)
        return _differentiable_scan(x, h0, w_ih, w_hh, b_ih, b_hh, ctx.lengths, ctx.mm_name)

    return scan


def _is_transformed(*tensors: Tensor) -> bool:
    """Whether any of these is a torch.func wrapper (vmap's batched tensor, grad's tracking tensor) or the
    batched gradient of ``autograd.grad(..., is_grads_batched=True)``: tensors without storage of their own."""
    functorch = torch._C._functorch
    return any(functorch.is_functorch_wrapped_tensor(t) or functorch.is_legacy_batchedtensor(t) for t in tensors)


# ----------------------------------------------------------------------------------------------------------


class _ScanFunction(torch.autograd.Function):
    """One direction of one layer, forward time order, masked by ``lengths``; returns (output, h_n, saved):
    ``saved`` (T, B, 4H) holds the gates for backward (None when not training) and is not differentiable.

    ``backward`` is the hand-written BPTT of the implementation, unless it must be differentiable itself
    (``create_graph=True``) or runs under a torch.func transform: then it is the derivative of
    :func:`_differentiable_scan`. ``vmap`` folds a vmapped dimension into the batch when only the data is
    batched, and otherwise scans each vmapped slice in turn."""

    @staticmethod
    def forward(  # type: ignore[override]
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
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        out, h_n, saved = impl.forward(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, training, mm_name)
        return out, h_n, saved

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Any, ...]) -> None:
        x, h0, w_ih, w_hh, b_ih, b_hh, lengths, mm_name, impl, training = inputs
        out, _, saved = output
        if saved is not None:
            ctx.mark_non_differentiable(saved)
        ctx.set_materialize_grads(False)  # no zero-filled gradient for ``saved`` (nor for an unused output)
        if training:
            ctx.save_for_backward(x, h0, w_ih, w_hh, b_ih, b_hh, out, saved)
        ctx.save_for_forward(x, h0, w_ih, w_hh, b_ih, b_hh)
        ctx.lengths, ctx.mm_name, ctx.impl = lengths, mm_name, impl

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any, d_out: Tensor | None, d_h_n: Tensor | None, _d_saved: None
    ) -> tuple[Tensor | None, ...]:
        x, h0, w_ih, w_hh, b_ih, b_hh, out, saved = ctx.saved_tensors
        d_out = torch.zeros_like(out) if d_out is None else d_out
        d_h_n = torch.zeros_like(h0) if d_h_n is None else d_h_n
        if torch.is_grad_enabled() or _is_transformed(d_out, d_h_n, x, h0):
            return _differentiable_backward(ctx, d_out, d_h_n) + (None, None, None, None)
        with torch.autocast(x.device.type, enabled=False):
            dx, dh0, d_w_ih, d_w_hh, d_b_ih, d_b_hh = ctx.impl.backward(
                d_out, d_h_n, x, h0, w_ih, w_hh, out, saved, ctx.lengths, ctx.mm_name
            )
        biases = (d_b_ih if b_ih is not None else None, d_b_hh if b_hh is not None else None)
        return (dx, dh0, d_w_ih, d_w_hh, *biases, None, None, None, None)

    @staticmethod
    def jvp(ctx: Any, *tangents: Any) -> tuple[Tensor, Tensor, None]:
        """Forward-mode AD (``torch.autograd.forward_ad``, ``torch.func.jvp``, ``jacfwd``, ``hessian``): the
        Jacobian-vector product of :func:`_differentiable_scan`, a missing tangent counting as zero. It is the
        transpose of the (linear) vector-Jacobian product, by reverse mode twice: forward mode inside an
        autograd.Function's jvp would nest dual levels, which autograd's forward_ad does not support."""
        primals = ctx.saved_tensors
        present = [(p, torch.zeros_like(p) if d is None else d) for p, d in zip(primals, tangents) if p is not None]
        bias = [b is not None for b in primals[4:]]
        outputs, vjp = torch.func.vjp(_scan_of(bias, ctx), *(p for p, _ in present))
        _, transpose = torch.func.vjp(vjp, tuple(torch.zeros_like(o) for o in outputs))
        (d_out, d_h_n), = transpose(tuple(d for _, d in present))
        return d_out, d_h_n, None

    @staticmethod
    def vmap(info: Any, in_dims: tuple[int | None, ...], *args: Any) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
        if all(dim is None for dim in in_dims[2:]):
            return _scan_folded(info.batch_size, in_dims, *args)
        return _scan_each(info.batch_size, in_dims, *args)


def _scan_folded(
    size: int, in_dims: tuple[int | None, ...], x: Tensor, h0: Tensor, *rest: Any
) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """vmap of the scan over ``size`` slices of x and/or h0 with shared weights: one scan of a batch ``size``
    times as large (slice v, row b is row v * B + b), the results split back (vmapped dim 1, 0, 1)."""
    steps, hidden = x.size(1 if in_dims[0] == 0 else 0), h0.size(-1)
    xs = x.movedim(in_dims[0], 1) if in_dims[0] is not None else x.unsqueeze(1).expand(steps, size, *x.shape[1:])
    hs = h0.movedim(in_dims[1], 0) if in_dims[1] is not None else h0.expand(size, *h0.shape)
    batch = hs.size(1)
    lengths = rest[4]
    rest = rest[:4] + (None if lengths is None else lengths.repeat(size),) + rest[5:]
    flat = (xs.reshape(steps, size * batch, -1), hs.reshape(size * batch, hidden))
    out, h_n, saved = _ScanFunction.apply(*flat, *rest)
    split = None if saved is None else saved.view(steps, size, batch, -1)
    outputs = (out.view(steps, size, batch, hidden), h_n.view(size, batch, hidden), split)
    return outputs, (1, 0, None if saved is None else 1)


def _scan_each(size: int, in_dims: tuple[int | None, ...], *args: Any) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """vmap of the scan when weights (or lengths) are vmapped too: one scan per slice, the results stacked."""

    def part(i: int) -> list[Any]:
        return [arg if dim is None or arg is None else arg.select(dim, i) for arg, dim in zip(args, in_dims)]

    results = [_ScanFunction.apply(*part(i)) for i in range(size)]
    out, h_n, saved = zip(*results)
    saved_all = None if saved[0] is None else torch.stack(saved)
    return (torch.stack(out), torch.stack(h_n), saved_all), (0, 0, None if saved_all is None else 0)


def fast_gru_scan(x: Tensor, h0: Tensor, lengths: Tensor | None, weight_ih: Tensor, weight_hh: Tensor,
                  bias_ih: Tensor | None, bias_hh: Tensor | None, reverse: bool = False) -> tuple[Tensor, Tensor]:
    """:meth:`gru_lib.layer.GRU._scan_direction`'s contract, fast: x (T, B, D) time-major padded, h0 (B, H),
    lengths (B,) int64 on the CPU or None; returns output (T, B, H) (zero at t >= lengths[b]) and h_n (B, H),
    the state after each sequence's last valid step (for ``reverse``: after its step 0). Where no gradient
    can be asked for (float32 on the CPU), :func:`gru_lib.inference.gru_infer_scan` computes it instead."""
    if inference.unsupported_reason(x, h0, weight_ih, weight_hh, bias_ih, bias_hh, lengths) is None:
        return inference.gru_infer_scan(x, h0, weight_ih, weight_hh, bias_ih, bias_hh, lengths, reverse=reverse)
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
        out, h_n, _ = _ScanFunction.apply(*inputs, lengths, mm_name, _impl_for(x), training)
    if reverse:
        out = out.flip(0) if index is None else out.gather(0, index.unsqueeze(-1).expand_as(out))
    return out, h_n


def runs_cudnn(device: torch.device | str) -> bool:
    """Whether :class:`FastGRU` hands its forward to ``nn.GRU.forward`` on this device: on CUDA, where that is
    cuDNN's fused kernel (PyTorch's own CUDA loop when cuDNN is disabled)."""
    return torch.device(device).type == "cuda"


class FastGRU(GRU):
    """A drop-in for :class:`torch.nn.GRU` (same constructor, forward and ``state_dict``) whose time loop is
    :func:`fast_gru_scan`: the C++ extension on CPU, the PyTorch implementation of the same algorithm elsewhere.
    Outputs and gradients match ``nn.GRU`` to float32 rounding (tests: within 1e-5), also under torch.func
    (grad, vmap, jacrev, jacfwd), with double backward, and with float16 or bfloat16 parameters."""

    # GRU.forward calls _scan_direction(x, h0, lengths, weight_ih, weight_hh, bias_ih, bias_hh, reverse=...):
    # fast_gru_scan takes exactly these arguments.
    _scan_direction = staticmethod(fast_gru_scan)

    def forward(  # type: ignore[override]
        self, input: Tensor | PackedSequence, hx: Tensor | None = None
    ) -> tuple[Tensor | PackedSequence, Tensor]:
        """``nn.GRU``'s forward on CUDA (:func:`runs_cudnn`), the book's loop with :func:`fast_gru_scan`
        elsewhere."""
        data = input.data if isinstance(input, PackedSequence) else input
        if runs_cudnn(data.device):
            return torch.nn.GRU.forward(self, input, hx)
        return super().forward(input, hx)
