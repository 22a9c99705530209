"""gru_lib.native: the loader of the C++ kernels, and switching them off for a block."""

from __future__ import annotations

import os

import pytest

from gru_lib import native


@pytest.mark.parametrize("before", [None, "0", "1"])
def test_disabled_switches_the_kernels_off_and_restores_the_environment(
    before: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    if before is None:
        monkeypatch.delenv(native.NO_EXTENSION_ENV, raising=False)
    else:
        monkeypatch.setenv(native.NO_EXTENSION_ENV, before)
    with native.disabled():
        assert native.load("fast_gru") is None and native.load("mingru_scan") is None
    assert os.environ.get(native.NO_EXTENSION_ENV) == before
    if before != "1":
        assert native.load("mingru_scan") is not None, native.load_error("mingru_scan")
