"""Checkpoints: atomic writes, weights_only loading, and one-line errors for every kind of bad file."""

from __future__ import annotations

import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from gru_lib.checkpoint import (
    atomic_torch_save,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from gru_lib.errors import CheckpointError


def _state() -> dict:
    return {
        "model": {"w": torch.arange(6.0).reshape(2, 3)},
        "model_config": {"vocab_size": 10},
        "vocab": {"itos": ["<pad>", "<unk>"]},
        "train_config": {"seed": 0},
        "training": {"step": 3, "rng": [capture_rng_state()]},
    }


def test_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(_state(), path)
    loaded = load_checkpoint(path, require_training=True)
    assert loaded["format"] == "gru_lib.checkpoint" and loaded["version"] == 1
    torch.testing.assert_close(loaded["model"]["w"], torch.arange(6.0).reshape(2, 3))
    assert loaded["training"]["step"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]  # no temporary file left


def test_a_failed_write_leaves_the_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(_state(), path)
    before = path.read_bytes()

    def torn_save(obj, handle):  # writes half a file, then dies (like a kill during the write)
        handle.write(before[: len(before) // 2])
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", torn_save)
    with pytest.raises(KeyboardInterrupt):
        atomic_torch_save({"x": 1}, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


def _expect(path: Path, pattern: str, **kwargs) -> None:
    with pytest.raises(CheckpointError, match=pattern) as info:
        load_checkpoint(path, **kwargs)
    message = str(info.value)
    assert str(path) in message and "\n" not in message


def test_bad_files_give_one_line_errors_naming_the_file(tmp_path: Path) -> None:
    good = tmp_path / "good.pt"
    save_checkpoint(_state(), good)
    data = good.read_bytes()

    _expect(tmp_path / "absent.pt", "not found")
    (tmp_path / "empty.pt").write_bytes(b"")
    _expect(tmp_path / "empty.pt", "empty")
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    _expect(tmp_path / "truncated.pt", "truncated or corrupted")
    garbage = bytearray(data)
    garbage[: len(garbage) // 2] = bytes(random.Random(0).randrange(256) for _ in range(len(garbage) // 2))
    (tmp_path / "garbage.pt").write_bytes(bytes(garbage))
    _expect(tmp_path / "garbage.pt", "corrupted")  # either message says so
    (tmp_path / "text.pt").write_text("hello\n")
    _expect(tmp_path / "text.pt", "corrupted")


def test_arbitrary_objects_are_never_unpickled(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"format": "gru_lib.checkpoint", "payload": Path("/")}, path)  # a class instance, not plain data
    _expect(path, "refused")


def test_incompatible_checkpoints(tmp_path: Path) -> None:
    path = tmp_path / "c.pt"
    torch.save({"model": {}}, path)
    _expect(path, "not a gru_lib checkpoint")
    torch.save({"format": "gru_lib.checkpoint", "version": 99, **_state()}, path)
    _expect(path, "version 99")
    state = _state()
    del state["training"]
    save_checkpoint(state, path)
    load_checkpoint(path)
    _expect(path, "missing training", require_training=True)
    state = _state()
    state["vocab"] = ["<pad>"]
    save_checkpoint(state, path)
    _expect(path, "'vocab' should be a dictionary")
    with pytest.raises(ValueError, match="lacks"):
        save_checkpoint({"model": {}}, path)


def test_rng_state_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(1)
    random.seed(1)
    np.random.seed(1)
    state = capture_rng_state()
    path = tmp_path / "rng.pt"
    atomic_torch_save(state, path)
    expected = (torch.rand(3), random.random(), np.random.rand())
    restore_rng_state(torch.load(path, weights_only=True))
    got = (torch.rand(3), random.random(), np.random.rand())
    torch.testing.assert_close(got[0], expected[0])
    assert got[1:] == expected[1:]


def test_unpicklable_error_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "pickle.pt"
    path.write_bytes(pickle.dumps({"a": 1}) + b"junk")
    _expect(path, "corrupted|refused")
