"""Fixtures and markers shared by the unit tests.

Markers (registered here): ``slow`` for tests that train or run long loops for more than a few seconds,
``subprocess`` for tests that start Python processes (the real command line, torchrun, a clean interpreter).
``pytest -m "not slow and not subprocess"`` runs the quick in-process tests only."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: trains a model or runs a long loop (seconds to minutes)")
    config.addinivalue_line("markers", "subprocess: starts Python processes (command line, torchrun, clean imports)")


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One intra-op thread for the test: the batches in unit tests are tiny, so one thread is faster (no spinning
    when the machine is shared) and makes float32 training curves independent of the core count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def restore_threads() -> Iterator[None]:
    """Put the intra-op thread count back after a test whose code under test sets it (``--threads``)."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(params=["portable", "avx2", "avx512"])
def level(request: pytest.FixtureRequest) -> Iterator[str]:
    """Each instruction-set path of the C++ kernels (gru_lib.isa), forced for the test; a path this CPU cannot
    run is skipped with the reason, so every machine tests every path it can run."""
    from gru_lib import isa

    if request.param not in isa.cpu_levels():
        pytest.skip(f"this CPU has no {request.param} (it runs {', '.join(isa.cpu_levels())})")
    with isa.forced(request.param):
        yield request.param
