"""The package itself: ``import gru_lib`` is light (PyTorch is not even loaded until a name is used, and the
optional packages load only where the code that needs them runs), its exported names resolve, and
``seed_everything`` changes only what it says it changes."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import gru_lib
from gru_lib.repro import seed_everything

ROOT = Path(__file__).resolve().parents[1]
OPTIONAL = ("sklearn", "scipy", "tqdm", "pandas", "matplotlib")


def _loaded_after(code: str) -> list[str]:
    probe = f"{code}; import sys; print(sorted({{m.split('.')[0] for m in sys.modules}} & set({OPTIONAL!r})))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    return eval(done.stdout.strip().splitlines()[-1])  # noqa: S307 (a list of names printed by the probe)


@pytest.mark.subprocess
def test_import_gru_lib_loads_no_optional_package() -> None:
    assert _loaded_after("import gru_lib") == []
    # PyTorch itself imports tqdm; beyond that, training code loads nothing optional until it runs.
    assert set(_loaded_after("import gru_lib.train, gru_lib.cli, gru_lib.evaluate")) <= {"tqdm"}


def test_every_exported_name_resolves() -> None:
    for name in gru_lib.__all__:
        assert getattr(gru_lib, name) is not None, name
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        gru_lib.nope  # noqa: B018
    from gru_lib import fast, native  # submodules still import by name

    assert fast.FastGRU is gru_lib.FastGRU and callable(native.load)


def test_seed_everything_seeds_and_leaves_threads_and_hash_seed_alone(restore_threads: None) -> None:
    threads, hash_seed = torch.get_num_threads(), os.environ.get("PYTHONHASHSEED")
    seed_everything(7)
    first = (random.random(), torch.rand(1).item())
    generator = seed_everything(7)
    assert (random.random(), torch.rand(1).item()) == first
    assert torch.rand(1, generator=generator).item() == torch.rand(1, generator=torch.Generator().manual_seed(7)).item()
    assert torch.get_num_threads() == threads and os.environ.get("PYTHONHASHSEED") == hash_seed
    seed_everything(7, threads=1)
    assert torch.get_num_threads() == 1
