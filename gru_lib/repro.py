"""Reproducibility: the seeds (and, when asked, the thread count) every notebook and test fixes before it
computes.

Python's string hashing (the order of a ``set`` of strings) is seeded once, when the interpreter starts, from
``PYTHONHASHSEED``: setting it later changes nothing in the running process, so it is not set here. Start
the process with ``PYTHONHASHSEED=0`` (the Makefile and the notebook checks do) when such order matters."""

from __future__ import annotations

import random

import numpy as np
import torch

__all__ = ["seed_everything"]


def seed_everything(seed: int = 0, threads: int | None = None) -> torch.Generator:
    """Seed Python's ``random``, NumPy and PyTorch (CPU and CUDA). With ``threads``, also set the intra-op
    thread count (results of reductions can depend on it); without, the caller's count is left alone.
    Returns a ``torch.Generator`` seeded with ``seed`` for code that wants its own stream."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if threads is not None:
        torch.set_num_threads(threads)
    return torch.Generator().manual_seed(seed)
