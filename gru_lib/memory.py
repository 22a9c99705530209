"""``peak_rss_mb``: how much resident memory a call adds at its peak, where the OS lets us measure it.

The measurement (Linux only):

1. ``gc.collect()`` and glibc's ``malloc_trim(0)`` (when the C library has it) hand freed memory back to the
   kernel, so that the call's own allocations are not served from memory the process already holds;
2. writing ``5`` to ``/proc/self/clear_refs`` resets the kernel's high-water mark ``VmHWM`` to the current
   resident size ``VmRSS``;
3. the call runs; the result is ``(VmHWM after - VmRSS before) / 1024`` MB (both in kB).

This counts everything the process maps during the call: tensors, workspaces, allocator overhead. It is a
property of the whole process, so other threads allocating at the same time are counted too. Allocations
served from memory the allocator kept (small blocks in the heap) do not show; large tensors (glibc maps
blocks above its mmap threshold, 128 kB by default and growing) do.

On other systems (macOS, Windows, Linux without ``/proc/self/clear_refs``) the call still runs and the
measurement is ``None``: callers say that the measurement needs Linux and skip what depends on it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import sys
from pathlib import Path
from typing import Callable, TypeVar

__all__ = ["peak_rss_mb"]

T = TypeVar("T")

_PROC_SELF = Path("/proc/self")  # a module constant, so that tests can point it at a missing directory


def _status_kb(field: str) -> int:
    """The value of ``field`` (e.g. ``VmRSS``) in ``/proc/self/status``, in kB."""
    for line in (_PROC_SELF / "status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise OSError(f"{field} not in {_PROC_SELF / 'status'}")


def _malloc_trim() -> None:
    """Return the heap's free memory to the kernel (glibc's ``malloc_trim(0)``); a no-op without glibc."""
    name = ctypes.util.find_library("c")
    if name is None:
        return
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # musl, or a C library without malloc_trim
        return
    trim(0)


def measurable() -> bool:
    """True when :func:`peak_rss_mb` can measure on this system (Linux with ``/proc/self/clear_refs``)."""
    return sys.platform.startswith("linux") and (_PROC_SELF / "clear_refs").exists()


def peak_rss_mb(fn: Callable[[], T]) -> tuple[float | None, T]:
    """Run ``fn()`` once and return ``(extra_mb, result)``.

    ``extra_mb`` is the resident memory, in MB (2**20 bytes), that the process held at the peak of the call
    above what it held just before it: ``(VmHWM - VmRSS_before) / 1024`` after resetting the high-water
    mark (see the module docstring). It is ``None`` when the system cannot measure it (not Linux, or no
    writable ``/proc/self/clear_refs``); ``fn`` runs in every case and its result is returned unchanged.
    """
    if not measurable():
        return None, fn()
    gc.collect()
    _malloc_trim()
    try:
        (_PROC_SELF / "clear_refs").write_text("5")  # VmHWM := VmRSS
        before = _status_kb("VmRSS")
    except OSError:  # /proc present but not writable (some sandboxes)
        return None, fn()
    result = fn()
    return (_status_kb("VmHWM") - before) / 1024, result
