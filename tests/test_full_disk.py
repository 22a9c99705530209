"""A full disk while `train` writes a checkpoint: torch.save's zip writer reports it as a RuntimeError
("[enforce fail at inline_container.cc] unexpected pos"), not an OSError. The command still says, in one line,
which file could not be written and why, and leaves no temporary file."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import torch

from synthetic_news import write_ag_news

from gru_lib import checkpoint
from gru_lib.checkpoint import atomic_torch_save
from gru_lib.cli import main

TINY = ["--epochs", "1", "--embed-dim", "8", "--hidden-size", "8", "--batch-size", "8", "--no-progress",
        "--threads", "1", "--embedding-init", "random"]


def _zip_writer_fails(*args: object, **kwargs: object) -> None:
    raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")


def test_the_zip_writers_failure_on_a_full_disk_is_no_space_left(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(torch, "save", _zip_writer_fails)

    class Full:  # os.statvfs of a full file system
        f_bavail, f_frsize = 0, 4096

    monkeypatch.setattr(checkpoint.os, "statvfs", lambda path: Full)
    data, out = write_ag_news(tmp_path / "data", 32, 8), tmp_path / "run"
    assert main(["train", "--data", str(data), "--out", str(out), *TINY]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(out / "checkpoint.pt") in err and "no space left on device" in err, err
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]


def test_a_failed_write_with_room_left_is_an_io_error_naming_the_file(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch, "save", _zip_writer_fails)
    target = tmp_path / "checkpoint.pt"
    with pytest.raises(OSError) as info:
        atomic_torch_save({"a": 1}, target)
    assert info.value.filename == str(target) and "stopped short" in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_a_real_full_file_system(tmp_path: Path) -> None:
    """On a 64 KiB tmpfs (root only; skipped where mounting is not allowed): the real torch.save failure."""
    mount = tmp_path / f"tiny-{uuid.uuid4().hex[:8]}"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({done.stderr.decode().strip()[:80]})")
    try:
        code = ("import sys, torch\nfrom gru_lib.checkpoint import atomic_torch_save\n"
                "from gru_lib.errors import describe_os_error\n"
                "try:\n    atomic_torch_save({'w': torch.randn(100000)}, sys.argv[1])\n"
                "except OSError as e:\n    print(describe_os_error(e))\n")
        run = subprocess.run([sys.executable, "-c", code, str(mount / "checkpoint.pt")], capture_output=True,
                             text=True, timeout=120)
        assert run.returncode == 0, run.stderr
        assert "no space left on device" in run.stdout and str(mount / "checkpoint.pt") in run.stdout
        assert os.listdir(mount) == []
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)
