"""An inference-only GRU scan for the CPU (``csrc/gru_infer.cpp``): :func:`gru_lib.fast.fast_gru_scan`'s
forward contract, float32, without autograd.

One direction of one layer, time-major, PyTorch's "reset-after" GRU with weights stacked r|z|n::

    GI = X W_ih^T + b_ih                                  all T steps in one matrix product
    per step t: r = sigmoid(GI_r[t] + h W_hr^T + b_hr)     z = sigmoid(GI_z[t] + h W_hz^T + b_hz)
                n = tanh(GI_n[t] + r * (h W_hn^T + b_hn))   h' = n + z * (h - n)

The per-step product ``h W_hh^T`` is hand-written and fused with the gates, reading ``W_hh`` in the packed
layout of :func:`pack_weights`, with the whole time loop in C++. It has three paths, one per instruction set
(AVX-512, AVX2 + FMA, and portable code for any CPU); :mod:`gru_lib.isa` chooses the best the CPU runs, or
the one ``GRU_LIB_ISA`` names.

Use it only where no gradient is needed: :func:`unsupported_reason` says ``None`` when
:func:`gru_infer_scan` applies, else why not (the caller then takes its usual path)::

    if unsupported_reason(x, h0, w_ih, w_hh, b_ih, b_hh, lengths) is None:
        out, h_n = gru_infer_scan(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse=reverse)

Threads: ``torch.get_num_threads()``; with ``B >= ROWS_PER_THREAD * threads`` each thread runs its own batch
rows through all steps (no synchronisation), otherwise the threads split the hidden units and meet at one
barrier per step (:func:`choose_mode`).
"""

from __future__ import annotations

import contextlib
import math
import weakref
from collections import OrderedDict
from collections.abc import Iterator
from types import ModuleType

import torch
from torch import Tensor
from torch.nn import functional as F

from gru_lib import isa, native
from gru_lib.lengths import reverse_within_lengths

__all__ = ["gru_infer_scan", "unsupported_reason", "pack_weights", "packed_weights", "clear_cache",
           "choose_mode", "extension", "kernel_path", "ROWS_PER_THREAD", "PREFETCH", "SPIN_BARRIER", "disabled"]

_STEM = "gru_infer"
BLOCK = 16  # hidden units per block of the packed layout (one AVX-512 vector of float32, two AVX2 ones)
# With at least this many rows per thread the threads split the batch rows (no barrier per step, every
# thread reads all of W_hh, compute-bound); with fewer they split the hidden units (each reads its share of
# W_hh, bandwidth-bound, one barrier per step). ``python -m gru_lib.infer_bench`` measures both.
ROWS_PER_THREAD = 4
PREFETCH = 0        # software prefetch distance of the weight stream, in k steps (0: none; 2-16 measured no faster)
SPIN_BARRIER = True  # the kernel's own spin barrier between steps (False: OpenMP's barrier)
_CACHE_SIZE = 16


_DISABLED = [0]  # depth of nested disabled() blocks


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """Inside the block :func:`unsupported_reason` declines, so :func:`gru_lib.fast.fast_gru_scan` runs its
    training kernel's forward even without gradients (chapter 6's ladder times that loop)."""
    _DISABLED[0] += 1
    try:
        yield
    finally:
        _DISABLED[0] -= 1


def extension() -> ModuleType | None:
    """The compiled ``csrc/gru_infer.cpp`` (:func:`gru_lib.native.load`), or ``None``."""
    return native.load(_STEM)


def pack_weights(w_hh: Tensor) -> Tensor:
    """``W_hh`` (3H, H), stacked r|z|n, as a contiguous (NB, H, 3, 16) float32 tensor, NB = ceil(H / 16):
    element ``[jb, k, g, i] = W_hh[g*H + jb*16 + i, k]``, zero where ``jb*16 + i >= H``. One block of 16
    hidden units then reads H*48 consecutive floats per step."""
    if w_hh.dim() != 2 or w_hh.size(0) != 3 * w_hh.size(1):
        raise ValueError(f"pack_weights: w_hh must have shape (3H, H), got {tuple(w_hh.shape)}")
    hidden = w_hh.size(1)
    blocks = math.ceil(hidden / BLOCK)
    w = w_hh.detach().to(torch.float32).reshape(3, hidden, hidden)
    w = F.pad(w, (0, 0, 0, blocks * BLOCK - hidden))  # (3, NB*16, H): zero rows for the padded units
    return w.view(3, blocks, BLOCK, hidden).permute(1, 3, 0, 2).contiguous()


# key (data_ptr, shape, stride, dtype) -> (weak reference to the weight, a copy of its values, packed weight)
_CACHE: OrderedDict[tuple, tuple[weakref.ref, Tensor, Tensor]] = OrderedDict()


def packed_weights(w_hh: Tensor) -> Tensor:
    """:func:`pack_weights` of ``w_hh``, cached. A cached entry serves only the same tensor object, at the
    same address, shape and strides, holding the same values as when it was packed: the cache keeps a copy
    of the weight and compares it (``torch.equal``, a read of ``3H * H`` floats, far less than packing) on
    every call. So every change of the values is seen, also those that do not move the tensor's version
    counter (fused optimizers, writes through ``w.data`` or through another tensor on the same memory).
    Tensors created under ``torch.inference_mode`` are packed on every call."""
    if w_hh.is_inference():
        return pack_weights(w_hh)
    key = (w_hh.data_ptr(), tuple(w_hh.shape), tuple(w_hh.stride()), w_hh.dtype)
    entry = _CACHE.get(key)
    if entry is not None and entry[0]() is w_hh and torch.equal(entry[1], w_hh):
        _CACHE.move_to_end(key)
        return entry[2]
    packed = pack_weights(w_hh)
    _CACHE[key] = (weakref.ref(w_hh, lambda ref, key=key: _forget(key, ref)), w_hh.detach().clone(), packed)
    _CACHE.move_to_end(key)
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return packed


def _forget(key: tuple, ref: weakref.ref) -> None:
    """Drop the entry of a weight that was freed (unless a newer tensor at its address owns the key)."""
    entry = _CACHE.get(key)
    if entry is not None and entry[0] is ref:
        del _CACHE[key]


def clear_cache() -> None:
    """Forget every packed weight (see :func:`packed_weights`)."""
    _CACHE.clear()


def choose_mode(batch: int, threads: int | None = None) -> str:
    """``"rows"`` (threads split the batch rows) when ``batch >= ROWS_PER_THREAD * threads``, else ``"cols"``
    (threads split the hidden units, one barrier per step); ``threads`` defaults to torch's count. One
    thread always runs "rows" (no barrier)."""
    threads = threads or torch.get_num_threads()
    return "rows" if threads == 1 or batch >= ROWS_PER_THREAD * threads else "cols"


def kernel_path() -> str:
    """The instruction set the kernel runs now (:func:`gru_lib.isa.selected`: ``avx512``, ``avx2`` or
    ``portable``)."""
    return isa.selected()


def unsupported_reason(x: Tensor, h0: Tensor, w_ih: Tensor, w_hh: Tensor,
                       b_ih: Tensor | None, b_hh: Tensor | None,
                       lengths: Tensor | None = None) -> str | None:
    """``None`` when :func:`gru_infer_scan` runs these arguments and is the faster
    path, else why not: the extension is not built, a tensor is not a float32 CPU
    tensor, a gradient could be asked for (grad mode on and an input requires grad),
    a torch.func transform wraps an input, or autocast is on for the CPU."""
    if _DISABLED[0]:
        return "disabled by gru_lib.inference.disabled()"
    if extension() is None:
        return f"gru_infer extension unavailable ({native.load_error(_STEM) or 'off'})"
    named = {"x": x, "h0": h0, "w_ih": w_ih, "w_hh": w_hh, "b_ih": b_ih, "b_hh": b_hh}
    tensors = [t for t in named.values() if t is not None]
    for name, t in named.items():
        if t is not None and (t.device.type != "cpu" or t.dtype != torch.float32):
            return f"{name} is {t.dtype} on {t.device}; it takes float32 CPU tensors"
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return "a gradient could be needed (grad mode on and an input requires grad)"
    functorch = torch._C._functorch
    if any(functorch.is_functorch_wrapped_tensor(t)
           or functorch.is_legacy_batchedtensor(t) for t in tensors):
        return "a torch.func transform (vmap, grad, jvp) wraps an input"
    if torch.is_autocast_enabled("cpu"):
        return "autocast is enabled for the CPU"
    return None


def gru_infer_scan(x: Tensor, h0: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor | None,
                   b_hh: Tensor | None, lengths: Tensor | None = None, *, reverse: bool = False,
                   mode: str | None = None, threads: int = 0, prefetch: int | None = None,
                   spin: bool | None = None) -> tuple[Tensor, Tensor]:
    """:func:`gru_lib.fast.fast_gru_scan`'s forward without autograd: x (T, B, D), h0 (B, H), lengths (B,)
    or None; returns output (T, B, H), zero at ``t >= lengths[b]``, and h_n (B, H), the state after each
    sequence's last valid step (h0 for length 0); ``reverse`` reads each sequence backwards within its
    length (h_n: the state after its step 0), as fast_gru_scan does. Raises ValueError with
    :func:`unsupported_reason`'s message when that is not None. ``mode`` (``"rows"``/``"cols"``, default
    :func:`choose_mode`), ``threads`` (default ``torch.get_num_threads()``), ``prefetch`` (default
    :data:`PREFETCH`) and ``spin`` (default :data:`SPIN_BARRIER`) exist for measurements."""
    reason = unsupported_reason(x, h0, w_ih, w_hh, b_ih, b_hh, lengths)
    if reason is not None:
        raise ValueError(f"gru_infer_scan: {reason}")
    steps, batch, inputs = x.shape
    hidden = w_hh.size(1)
    if h0.shape != (batch, hidden) or w_ih.shape != (3 * hidden, inputs):
        raise ValueError(f"gru_infer_scan: shapes x {tuple(x.shape)}, h0 {tuple(h0.shape)}, "
                         f"w_ih {tuple(w_ih.shape)}, w_hh {tuple(w_hh.shape)} do not fit "
                         "(T, B, D), (B, H), (3H, D), (3H, H)")
    if lengths is not None:
        if lengths.shape != (batch,):
            raise ValueError(f"gru_infer_scan: lengths must have shape ({batch},), got {tuple(lengths.shape)}")
        lengths = None if bool((lengths >= steps).all()) else lengths.to("cpu", torch.int64).clamp(0, steps)
    if reverse:  # the index is an involution: the same gather un-reverses the output
        x = x.flip(0) if lengths is None else reverse_within_lengths(x, lengths, time_major=True)
    with torch.no_grad():
        out, h_n = extension().forward(x, h0, w_ih, packed_weights(w_hh), b_ih, b_hh, lengths,
                                       mode or choose_mode(batch, threads), threads, isa.level_index(),
                                       [PREFETCH if prefetch is None else prefetch,
                                        int(SPIN_BARRIER if spin is None else spin)])
    if reverse:
        out = out.flip(0) if lengths is None else reverse_within_lengths(out, lengths, time_major=True)
    return out, h_n
