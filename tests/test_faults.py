"""Faults, through the real command line (subprocesses): a run killed mid-epoch (SIGTERM, SIGKILL) and resumed
ends exactly like an uninterrupted run of the same seed; a kill during a checkpoint write leaves the latest
checkpoint readable; bad checkpoints give a one-line error; a non-finite loss stops training and keeps the last
good checkpoint; and the same command runs under ``torchrun`` with two processes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from synthetic_news import write_ag_news

from gru_lib.checkpoint import load_checkpoint
from gru_lib.cli import main as cli_main
from gru_lib.errors import CheckpointError

ROOT = Path(__file__).resolve().parents[1]
# A tiny model on a tiny synthetic AG News: about 60 optimisation steps, a second or two per run.
COMMON = [
    "--epochs", "2", "--batch-size", "8", "--embed-dim", "12", "--hidden-size", "10", "--max-len", "12",
    "--seed", "3", "--checkpoint-every", "4", "--threads", "1", "--no-progress",
]
TIMEOUT = 120
# Every test here runs the real command line in a subprocess or reads what such a run wrote.
pytestmark = [pytest.mark.subprocess, pytest.mark.slow]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_ag_news(tmp_path_factory.mktemp("data"), 236, 40)  # 30 batches of 8 (the last one short)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "GRU_LIB_CHECKPOINT_SLEEP")}
    env.update(PYTHONHASHSEED="0", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), **extra)
    return env


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gru_lib", *args], capture_output=True, text=True,
                          timeout=TIMEOUT, env=env or _env(), cwd=ROOT)


def _train(data: Path, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return _cli("train", "--data", str(data), "--out", str(out), *COMMON, *extra)


def _resume(data: Path, out: Path) -> subprocess.CompletedProcess[str]:
    return _cli("train", "--data", str(data), "--out", str(out), "--resume", "--threads", "1", "--no-progress")


def _outcome(out: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """The final weights and the metrics, without the wall-clock fields."""
    state = load_checkpoint(out / "checkpoint.pt")
    metrics = json.loads((out / "metrics.json").read_text())
    def timeless(entry: dict) -> dict:
        return {k: v for k, v in entry.items() if not k.endswith("seconds")}

    metrics = timeless(metrics)
    metrics["history"] = [timeless(entry) for entry in metrics["history"]]
    return state["model"], metrics


def _assert_same_run(out: Path, reference: Path) -> None:
    weights, metrics = _outcome(out)
    ref_weights, ref_metrics = _outcome(reference)
    assert weights.keys() == ref_weights.keys()
    for name, value in ref_weights.items():
        torch.testing.assert_close(weights[name], value, rtol=0, atol=1e-6, msg=name)
    _assert_close_tree(metrics, ref_metrics)


def _assert_close_tree(got: object, expected: object, where: str = "metrics") -> None:
    """Equal nested dicts/lists; floats within 1e-9 (they come from identical computations)."""
    if isinstance(expected, dict):
        assert isinstance(got, dict) and got.keys() == expected.keys(), where
        for key in expected:
            _assert_close_tree(got[key], expected[key], f"{where}.{key}")
    elif isinstance(expected, list):
        assert isinstance(got, list) and len(got) == len(expected), where
        for index, (g, e) in enumerate(zip(got, expected)):
            _assert_close_tree(g, e, f"{where}[{index}]")
    elif isinstance(expected, float):
        assert got == pytest.approx(expected, rel=1e-9, abs=1e-12), where
    else:
        assert got == expected, where


@pytest.fixture(scope="module")
def reference(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("reference")
    result = _train(data_dir, out)
    assert result.returncode == 0, result.stderr
    return out


def _start_training(data: Path, out: Path, sleep: float) -> subprocess.Popen[str]:
    """A training run whose checkpoint writes pause ``sleep`` s between writing the temporary file and
    swapping it in (``GRU_LIB_CHECKPOINT_SLEEP``): slow enough to be killed mid-epoch, and mid-write."""
    return subprocess.Popen(
        [sys.executable, "-m", "gru_lib", "train", "--data", str(data), "--out", str(out), *COMMON],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        env=_env(GRU_LIB_CHECKPOINT_SLEEP=str(sleep)),
    )


def _wait_for(condition, process: subprocess.Popen[str], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"training ended (status {process.returncode}) before {what}: {process.stderr.read()}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.01)


def _temporary_files(out: Path) -> list[Path]:
    return sorted(out.glob(".checkpoint.pt.*.tmp"))


def test_uninterrupted_reference_run(reference: Path) -> None:
    state = load_checkpoint(reference / "checkpoint.pt", require_training=True)
    assert state["training"]["complete"] and state["training"]["step"] == 60
    assert len(json.loads((reference / "metrics.json").read_text())["history"]) == 2


def test_sigterm_mid_epoch_then_resume_matches_uninterrupted_run(
    data_dir: Path, reference: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    process = _start_training(data_dir, out, sleep=0.3)
    _wait_for(lambda: (out / "checkpoint.pt").exists(), process, "the first checkpoint")
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=TIMEOUT)
    assert process.returncode == 128 + signal.SIGTERM, stderr
    assert "continue with --resume" in stderr and "Traceback" not in stderr
    stopped = load_checkpoint(out / "checkpoint.pt", require_training=True)["training"]
    assert not stopped["complete"] and 0 < stopped["step"] < 30, "the SIGTERM should land in epoch 1"
    assert not _temporary_files(out)

    result = _resume(data_dir, out)
    assert result.returncode == 0, result.stderr
    assert f"step {stopped['step']}" in result.stdout
    _assert_same_run(out, reference)


def test_sigkill_during_a_checkpoint_write_then_resume_matches_uninterrupted_run(
    data_dir: Path, reference: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    process = _start_training(data_dir, out, sleep=1.0)
    _wait_for(lambda: (out / "checkpoint.pt").exists(), process, "the first checkpoint")
    # Now wait until the *next* checkpoint is half-way: written to its temporary file, not yet swapped in.
    _wait_for(lambda: bool(_temporary_files(out)), process, "the second checkpoint's write")
    process.kill()
    process.communicate(timeout=TIMEOUT)
    assert process.returncode == -signal.SIGKILL
    pending = _temporary_files(out)
    assert len(pending) == 1, "the kill should have landed between write and replace"
    # The latest checkpoint is the previous, complete one: readable, mid-epoch; the new one never replaced it.
    survived = load_checkpoint(out / "checkpoint.pt", require_training=True)["training"]
    assert survived["step"] >= 4 and survived["step"] % 4 == 0 and not survived["complete"]
    try:  # killed after the write (during the pause before the swap): the temporary file is the next one
        assert load_checkpoint(pending[0], require_training=True)["training"]["step"] == survived["step"] + 4
    except CheckpointError:
        pass  # killed while torch.save was still writing it: a torn temporary file, never swapped in

    result = _resume(data_dir, out)
    assert result.returncode == 0, result.stderr
    _assert_same_run(out, reference)


def _one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def _bad_checkpoints(reference: Path) -> dict[str, bytes]:
    good = (reference / "checkpoint.pt").read_bytes()
    middle = len(good) // 2
    corrupted = bytearray(good)
    corrupted[:64] = b"\x00" * 64  # the zip's first local header and the start of the pickle's name
    flipped = bytearray(good)
    flipped[middle] ^= 0xFF  # one bit pattern inside the tensor data: torch.load alone would not notice
    scratch = reference.parent / "scratch.pt"
    state = torch.load(reference / "checkpoint.pt", weights_only=True)
    torch.save({**state, "version": 99}, scratch)
    future = scratch.read_bytes()
    state["model"]["head.weight"] = torch.zeros(3, 3)
    torch.save(state, scratch)
    wrong_shape = scratch.read_bytes()
    torch.save({"weights": torch.zeros(2)}, scratch)
    foreign = scratch.read_bytes()
    scratch.unlink()
    return {
        "empty": b"",
        "truncated": good[:middle],
        "corrupted": bytes(corrupted),
        "flipped byte in the data": bytes(flipped),
        "not a checkpoint": b"this is not a checkpoint\n",
        "another version": future,
        "wrong weight shapes": wrong_shape,
        "another format": foreign,
    }


EXPECTED_WORDS = {
    "empty": "truncated",
    "truncated": "truncated or corrupted",
    "corrupted": "corrupted",
    "flipped byte in the data": "corrupted checkpoint (checksum mismatch",
    "not a checkpoint": "corrupted",
    "another version": "version 99",
    "wrong weight shapes": "head.weight",
    "another format": "not a gru_lib checkpoint",
}


def _main(capsys: pytest.CaptureFixture[str], *args: str) -> subprocess.CompletedProcess[str]:
    """The command line in this process (the same ``main`` as ``python -m gru_lib``; a subprocess costs
    seconds of start-up per call)."""
    capsys.readouterr()
    status = cli_main(list(args))
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(args, status, captured.out, captured.err)


@pytest.mark.parametrize("kind", list(EXPECTED_WORDS))
def test_bad_checkpoint_gives_one_line_error_naming_the_file(
    kind: str, data_dir: Path, reference: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    path = run / "checkpoint.pt"
    path.write_bytes(_bad_checkpoints(reference)[kind])
    word = EXPECTED_WORDS[kind]
    resume = ["train", "--data", str(data_dir), "--out", str(run), "--resume", "--threads", "1", "--no-progress"]
    _one_line_error(_main(capsys, *resume), str(path), word)
    _one_line_error(_main(capsys, "evaluate", "--model", str(run), "--data", str(data_dir)), str(path), word)
    _one_line_error(_main(capsys, "predict", "--model", str(run), "markets rally on earnings"), str(path), word)


def test_truncated_checkpoint_through_a_real_process_has_no_traceback(reference: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    path = run / "checkpoint.pt"
    path.write_bytes(path.read_bytes()[:1000])
    result = _cli("predict", "--model", str(run), "markets rally on earnings")
    _one_line_error(result, str(path), "truncated")
    assert "Traceback" not in result.stderr and not result.stdout


def test_resume_with_changed_settings_is_refused_naming_the_file(
    data_dir: Path, reference: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    result = _main(capsys, "train", "--data", str(data_dir), "--out", str(run), "--resume", "--hidden-size", "11")
    _one_line_error(result, str(run / "checkpoint.pt"), "hidden_size")


def test_non_finite_loss_stops_training_and_keeps_the_last_good_checkpoint(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    # A learning rate of 1e30 drives the weights to inf within a few steps.
    result = _train(data_dir, out, "--lr", "1e30", "--warmup", "0", "--schedule", "constant",
                    "--checkpoint-every", "1")
    line = _one_line_error(result, "non-finite", "training", "kept", str(out / "checkpoint.pt"))
    assert "Traceback" not in result.stderr, line
    kept = load_checkpoint(out / "checkpoint.pt", require_training=True)
    assert kept["training"]["step"] >= 1
    for name, value in kept["model"].items():
        assert torch.isfinite(value).all(), f"the kept checkpoint has non-finite {name}"
    assert not (out / "metrics.json").exists()


def test_torchrun_two_processes_end_to_end(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    # 236 + 5 rows in batches of 8: an odd count of 31 batches. The sampler wraps one around so both ranks
    # take 16 steps per epoch and neither waits for the other at an all-reduce.
    extra = tmp_path / "data"
    shutil.copytree(data_dir, extra)
    with open(extra / "ag_news" / "train.csv", "a", encoding="utf-8") as handle:
        handle.write('"2","Coach Says","the match season goal"\n' * 5)
    result = subprocess.run(
        [*torchrun, "-m", "gru_lib", "train", "--data", str(extra), "--out", str(out), *COMMON],
        capture_output=True, text=True, timeout=TIMEOUT, env=_env(), cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    # Rank 0 alone prints and writes: one header, one line per epoch, one final line.
    assert result.stdout.count("training on 241 rows") == 1
    assert result.stdout.count("epoch 2/2") == 1
    assert result.stdout.count("test accuracy") == 1
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["processes"] == 2 and metrics["steps"] == 2 * 16
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "config.json", "metrics.json", "vocab.json"]
    state = load_checkpoint(out / "checkpoint.pt", require_training=True)
    assert state["training"]["world_size"] == 2 and state["training"]["complete"]
