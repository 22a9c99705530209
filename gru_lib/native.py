"""The C++ kernels of chapters 6 and 7 (``gru_lib/csrc``), built on first use with
:mod:`torch.utils.cpp_extension` and cached by torch afterwards.

:func:`load` returns the compiled module of one source file, or ``None`` when the environment sets
``GRU_LIB_NO_EXTENSION=1`` or the build failed (no compiler, no headers); :func:`load_error` says why. Callers
then use their PyTorch implementation of the same contract, so a machine without a compiler still runs
everything, only slower.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import torch

from gru_lib import isa

__all__ = ["load", "load_error", "disabled", "release_cached_buffers", "NO_EXTENSION_ENV"]

CSRC = Path(__file__).with_name("csrc")
# Portable flags only: the kernels carry AVX-512, AVX2 and baseline code and run the one gru_lib.isa selects
# (GRU_MULTIVERSION in fast_math.h, set_isa below), so one build serves every machine that shares the
# extensions cache. -fopenmp: at::parallel_for
# is inline OpenMP code in ATen's headers, so without it an extension's parallel loops run on one thread.
CFLAGS = ["-O3", "-fno-math-errno", "-fno-trapping-math", "-fopenmp"]
LDFLAGS = ["-fopenmp"]
NO_EXTENSION_ENV = "GRU_LIB_NO_EXTENSION"


@dataclass
class _Built:
    modules: dict[str, ModuleType | None] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)


_BUILT = _Built()


def load(stem: str) -> ModuleType | None:
    """The module compiled from ``csrc/<stem>.cpp`` (about a minute the first time; cached under a name keyed
    on the sources, the flags and the torch version), or ``None`` (see the module docstring). A module with a
    ``set_isa`` binding is told :func:`gru_lib.isa.level_index` on every call (so ``GRU_LIB_ISA`` and
    :func:`gru_lib.isa.forced` reach it; a value this CPU cannot run raises :class:`gru_lib.errors.GruLibError`)."""
    if os.environ.get(NO_EXTENSION_ENV, "") not in ("", "0"):
        return None
    if stem not in _BUILT.modules:
        _BUILT.modules[stem] = None
        source = CSRC / f"{stem}.cpp"
        try:
            from torch.utils import cpp_extension

            digest = hashlib.sha256(source.read_bytes())
            for header in sorted(CSRC.glob("*.h")):
                digest.update(header.read_bytes())
            digest.update((" ".join(CFLAGS) + torch.__version__).encode())
            _BUILT.modules[stem] = cpp_extension.load(
                name=f"gru_lib_{stem}_{digest.hexdigest()[:12]}",
                sources=[str(source)],
                extra_cflags=CFLAGS,
                extra_ldflags=LDFLAGS,
                extra_include_paths=[str(CSRC)],
                verbose=False,
            )
        except Exception as error:  # no compiler, no headers, a failed build: the caller falls back
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
            _BUILT.errors[stem] = f"{type(error).__name__}: {first_line}"
    module = _BUILT.modules[stem]
    if module is not None and hasattr(module, "set_isa"):
        module.set_isa(isa.level_index())
    return module


def load_error(stem: str) -> str | None:
    """Why ``csrc/<stem>.cpp`` is not in use (None when it loaded or was not tried yet)."""
    return _BUILT.errors.get(stem)


@contextmanager
def disabled() -> Iterator[None]:
    """Inside the block, :func:`load` returns ``None``, so callers take their PyTorch implementations, as on a
    machine without a compiler (it sets ``GRU_LIB_NO_EXTENSION=1`` and restores the previous value after)."""
    previous = os.environ.get(NO_EXTENSION_ENV)
    os.environ[NO_EXTENSION_ENV] = "1"
    try:
        yield
    finally:
        if previous is None:
            del os.environ[NO_EXTENSION_ENV]
        else:
            os.environ[NO_EXTENSION_ENV] = previous


def release_cached_buffers() -> None:
    """Unmap the large buffers the loaded kernels keep for reuse (``csrc/buffers.h``: at most 1 GiB per
    kernel, only while unused). For measurements of peak memory, or to hand memory back to the system."""
    for module in _BUILT.modules.values():
        if module is not None:
            module.release_cached_buffers()
