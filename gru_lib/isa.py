"""Which instruction set the inference kernel (:mod:`gru_lib.inference`, ``csrc/gru_infer.cpp``) runs.

Three paths compute the same function (within float32 rounding of ``nn.GRU``):

* ``avx512``: AVX-512 intrinsics (16 floats a vector), on CPUs with AVX-512F and FMA;
* ``avx2``: the same step in 8-float vectors, compiled for AVX2 and FMA (most x86-64 CPUs since 2013);
* ``portable``: that code compiled for the compiler's baseline (SSE2 on x86-64, NEON on ARM): any CPU.

By default the kernel takes the best path the CPU runs. The environment variable ``GRU_LIB_ISA``
(``portable``, ``avx2`` or ``avx512``) asks for one, so a machine with AVX-512 can run the AVX2 and portable
code too; a value the CPU cannot run is refused in one line (:class:`gru_lib.errors.GruLibError`).
:func:`forced` does the same inside a ``with`` block (the tests run every path this way).
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
from collections.abc import Iterator
from pathlib import Path

from gru_lib.errors import GruLibError

__all__ = ["ISA_ENV", "LEVELS", "cpu_levels", "selected", "level_index", "forced", "describe", "processor_name"]

ISA_ENV = "GRU_LIB_ISA"
LEVELS: tuple[str, ...] = ("portable", "avx2", "avx512")  # in the kernel's numbering: 0, 1, 2
_FORCED: list[str] = []  # the innermost forced() level last


def _cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (Linux); empty elsewhere."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


@functools.cache
def cpu_levels() -> tuple[str, ...]:
    """The paths this CPU runs, slowest first: always ``portable``; ``avx2`` with AVX2 and FMA; ``avx512`` with
    AVX-512F and FMA (x86-64 only). Read once per process: every kernel call asks."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return ("portable",)
    flags = _cpu_flags()
    levels = ["portable"]
    if "fma" in flags and "avx2" in flags:
        levels.append("avx2")
    if "fma" in flags and "avx512f" in flags:
        levels.append("avx512")
    return tuple(levels)


def _check(level: str, source: str) -> str:
    if level not in LEVELS:
        raise GruLibError(f"{source}={level!r}: expected one of {', '.join(LEVELS)}")
    runs = cpu_levels()
    if level not in runs:
        raise GruLibError(f"{source}={level}: this CPU cannot run it (it runs {', '.join(runs)})")
    return level


def selected() -> str:
    """The path the kernel takes now: :func:`forced`'s, else ``GRU_LIB_ISA``'s, else the best of
    :func:`cpu_levels`. Raises :class:`GruLibError` for a value that is unknown or that this CPU cannot run."""
    if _FORCED:
        return _FORCED[-1]
    value = os.environ.get(ISA_ENV, "").strip().lower()
    if value:
        return _check(value, ISA_ENV)
    return cpu_levels()[-1]


def level_index(level: str | None = None) -> int:
    """The kernel's number for ``level`` (default :func:`selected`): 0 portable, 1 avx2, 2 avx512."""
    return LEVELS.index(selected() if level is None else level)


@contextlib.contextmanager
def forced(level: str) -> Iterator[None]:
    """Inside the block the kernel takes ``level`` (checked as ``GRU_LIB_ISA`` is), whatever the environment
    says; blocks nest."""
    _FORCED.append(_check(level, "isa.forced"))
    try:
        yield
    finally:
        _FORCED.pop()


def processor_name() -> str:
    """The processor's model name (/proc/cpuinfo on Linux, else what :mod:`platform` knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def describe() -> str:
    """One line for a chapter's or a benchmark's header: the processor, the kernel path it takes, and the
    paths it can run."""
    return f"{processor_name()}: kernel path {selected()} (this CPU runs: {', '.join(cpu_levels())})"
