"""Reproducibility: the seeds and thread count every notebook and test fixes before it computes."""

from __future__ import annotations

import os
import random

import numpy as np
import torch

__all__ = ["seed_everything"]


def seed_everything(seed: int = 0, threads: int | None = None) -> torch.Generator:
    """Seed Python, NumPy and PyTorch; optionally fix the intra-op thread count (results of reductions can
    depend on it). Returns a ``torch.Generator`` seeded with ``seed`` for code that wants its own stream."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))
    if threads is not None:
        torch.set_num_threads(threads)
    return torch.Generator().manual_seed(seed)
