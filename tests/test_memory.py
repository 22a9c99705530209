"""gru_lib.memory.peak_rss_mb: measures a call's peak resident memory on Linux, answers None elsewhere."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from gru_lib import memory
from gru_lib.memory import peak_rss_mb

linux_only = pytest.mark.skipif(not memory.measurable(), reason="needs Linux /proc/self/clear_refs")


@linux_only
def test_measures_a_large_allocation() -> None:
    size_mb = 64
    extra, total = peak_rss_mb(lambda: float(torch.ones(size_mb * 2**18).sum()))  # 2**18 fp32 = 1 MB
    assert total == size_mb * 2**18  # the result comes back unchanged
    assert extra is not None and 0.9 * size_mb <= extra <= size_mb + 16


@linux_only
def test_a_call_that_allocates_nothing_adds_almost_nothing() -> None:
    extra, result = peak_rss_mb(lambda: 3)
    assert result == 3 and extra is not None and extra < 4


@linux_only
def test_memory_still_held_before_the_call_does_not_count() -> None:
    held = torch.ones(32 * 2**18)  # 32 MB resident before the call
    extra, _ = peak_rss_mb(lambda: held.add_(1))  # in place: no new memory
    assert extra is not None and extra < 4


def test_returns_none_without_proc(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(memory, "_PROC_SELF", tmp_path / "no-proc")
    calls = []
    extra, result = peak_rss_mb(lambda: calls.append(1) or "ran")
    assert extra is None and result == "ran" and calls == [1]  # fn still runs, exactly once


def test_returns_none_off_linux(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "darwin")
    assert peak_rss_mb(lambda: 7) == (None, 7)
