"""Variable-length batches: the one home of the length mask and the reverse-within-lengths index.

For a right-padded batch with ``lengths`` L_b and T steps::

    mask[b, t]  = t < L_b                                     valid steps
    index[b, t] = L_b - 1 - t   if t < L_b   else   t         read each sequence backwards, padding in place

``index`` is an involution (applying it twice is the identity), so the same gather reverses and un-reverses.
Both come batch-major (B, T) or, with ``time_major=True``, (T, B), the layout of :class:`gru_lib.layer.GRU`.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["length_mask", "reverse_within_lengths_index", "reverse_within_lengths"]


def length_mask(lengths: Tensor, steps: int, *, device: torch.device | None = None,
                time_major: bool = False) -> Tensor:
    """Bool (B, T), or (T, B) when ``time_major``: True where ``t < lengths[b]``. On ``device`` (default:
    the device of ``lengths``)."""
    time = torch.arange(steps, device=lengths.device)
    mask = time[:, None] < lengths[None, :] if time_major else time[None, :] < lengths[:, None]
    return mask if device is None else mask.to(device)


def reverse_within_lengths_index(lengths: Tensor, steps: int, *, device: torch.device | None = None,
                                 time_major: bool = False) -> Tensor:
    """Int64 (B, T), or (T, B) when ``time_major``: ``L_b - 1 - t`` at valid steps, ``t`` at padded ones."""
    time = torch.arange(steps, device=lengths.device)
    if time_major:
        time, last = time[:, None], lengths[None, :] - 1
    else:
        time, last = time[None, :], lengths[:, None] - 1
    index = torch.where(time <= last, last - time, time)
    return index if device is None else index.to(device)


def reverse_within_lengths(x: Tensor, lengths: Tensor, *, time_major: bool = False) -> Tensor:
    """Reverse each sequence of ``x`` (B, T, ...) or, ``time_major``, (T, B, ...) within its length; padding
    stays in place. Applying it twice is the identity."""
    dim = 0 if time_major else 1
    index = reverse_within_lengths_index(lengths, x.shape[dim], device=x.device, time_major=time_major)
    index = index.reshape(*index.shape, *([1] * (x.dim() - 2))).expand_as(x)
    return x.gather(dim, index)
