"""Large buffers that are cheap to fill the first time (the Python side of ``csrc/buffers.h``).

PyTorch's CPU allocator returns large blocks to the system and takes fresh ones for the next call, and on Linux
the first write to every fresh 4 KiB page is a page fault. For the (T, B, 2H) tensors of minGRU at T = 4096
(134 MB) that costs more than the arithmetic done on them (on the machine that built the book: 34 ms to fill a
fresh buffer, 4 ms to fill a reused one). :func:`empty_large` asks the kernel for transparent huge pages (2 MiB,
512 times fewer faults) with ``madvise``, before anything touches the memory; where the system does not allow
it (other OSes, THP disabled, non-CPU tensors) it is ``torch.empty``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["empty_large", "LARGE_BYTES"]

LARGE_BYTES = 4 << 20  # below this the advice is not worth a system call
_HUGE = 2 << 20
_MADV_HUGEPAGE = 14  # <sys/mman.h> on Linux


def _libc_madvise():  # noqa: ANN202
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None
    madvise = libc.madvise
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    madvise.restype = ctypes.c_int
    return madvise


_MADVISE = _libc_madvise()


def empty_large(shape: Sequence[int], *, dtype: torch.dtype, device: torch.device | str = "cpu") -> Tensor:
    """``torch.empty(shape)``, backed by transparent huge pages where possible (module docstring)."""
    tensor = torch.empty(tuple(shape), dtype=dtype, device=device)
    nbytes = tensor.numel() * tensor.element_size()
    if _MADVISE is not None and tensor.device.type == "cpu" and nbytes >= LARGE_BYTES:
        begin = tensor.data_ptr()
        lo = (begin + _HUGE - 1) // _HUGE * _HUGE
        hi = (begin + nbytes) // _HUGE * _HUGE
        if hi > lo:
            _MADVISE(lo, hi - lo, _MADV_HUGEPAGE)  # advice only: a failure changes nothing
    return tensor
