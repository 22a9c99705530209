"""Scale-out faults, tested with ``torchrun`` itself on the real ``python -m gru_lib train`` (the command chapter 8
runs), on a small synthetic AG News, CPU and gloo.

* Two nodes on one machine: two ``torchrun`` agents (``--nnodes 2 --nproc-per-node 1`` each) meet at one c10d
  rendezvous on 127.0.0.1 and train as one job; the weights equal, bit for bit, those of one agent running both
  processes (``--nnodes 1 --nproc-per-node 2``). Same world size and per-process batch, so the same global batch
  and the same shards; the only arithmetic across processes is DDP's all-reduce of two operands, ``a + b``, which
  is exact in either order, so ``torch.equal`` is the check (with three or more processes the ring's order of
  summation could differ between layouts, and a tolerance would be needed).
* Elastic restart: with ``--max-restarts 1`` and a checkpoint every 4 steps, the test SIGKILLs the rank-1
  worker's PID mid-epoch; torchrun restarts both workers, they resume from the last checkpoint
  (:func:`gru_lib.distributed.resume_on_restart`), and the run ends with the uninterrupted run's weights.

Every launch is the leader of a new process group; workers (torchrun starts each in its own session) carry a
tag in their environment, and ``finally`` kills every process that carries it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from synthetic_news import write_ag_news

from gru_lib.checkpoint import load_checkpoint
from gru_lib.distributed import init_distributed, resume_on_restart
from gru_lib.errors import GruLibError

ROOT = Path(__file__).resolve().parents[1]
STEPS_PER_EPOCH = 15  # 236 rows in batches of 8: 30 batches, 15 on each of the 2 processes
FLAGS = [
    "--epochs", "2", "--batch-size", "8", "--embed-dim", "12", "--hidden-size", "10", "--max-len", "12",
    "--seed", "3", "--checkpoint-every", "4", "--threads", "1", "--no-progress",
]
TIMEOUT = 120
TAG = "GRU_BOOK_TORCHRUN_TEST"  # in the environment of every process a test starts, workers included
# Set by a launcher or for a test: not passed on from the environment pytest runs in.
_LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "LOGLEVEL",
                  "GRU_LIB_CHECKPOINT_SLEEP", "TORCH_DISABLE_SHARE_RDZV_TCP_STORE")
# The torchrun tests (marked subprocess and slow) find workers through /proc.
_needs_proc = pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds workers in /proc")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_ag_news(tmp_path_factory.mktemp("data"), 236, 40)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _c10d(nnodes: int, nproc: int, rdzv_id: str, port: int) -> list[str]:
    return ["--nnodes", str(nnodes), "--nproc-per-node", str(nproc), "--rdzv-backend", "c10d",
            "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", rdzv_id]


def _tagged(tag: str) -> list[tuple[int, dict[str, str]]]:
    """Every live process whose environment holds ``TAG=tag``: (pid, environment)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "environ").read_bytes()
        except OSError:  # gone, or not ours
            continue
        env = dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)
        if env.get(TAG) == tag:
            found.append((int(entry.name), env))
    return found


class Launches:
    """``torchrun`` processes started with one tag, each logging stdout and stderr to ``logs/NAME.log``."""

    def __init__(self, logs: Path) -> None:
        self.logs, self.tag = logs, uuid.uuid4().hex
        self.processes: list[subprocess.Popen[bytes]] = []

    def torchrun(self, name: str, launch: list[str], data: Path, out: Path, **env: str) -> None:
        command = [sys.executable, "-m", "torch.distributed.run", *launch,
                   "-m", "gru_lib", "train", "--data", str(data), "--out", str(out), *FLAGS]
        clean = {k: v for k, v in os.environ.items() if k not in _LAUNCHER_VARS and not k.startswith("TORCHELASTIC")}
        clean.update(PYTHONHASHSEED="0", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), **{TAG: self.tag}, **env)
        with open(self.logs / f"{name}.log", "wb") as log:
            self.processes.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                                                   env=clean, start_new_session=True))

    def worker(self, rank: int, restart: int = 0) -> int | None:
        """The PID of the worker of global ``rank`` in torchrun's attempt ``restart`` (None while none runs)."""
        for pid, env in _tagged(self.tag):
            if env.get("RANK") == str(rank) and env.get("TORCHELASTIC_RESTART_COUNT") == str(restart):
                return pid
        return None

    def wait(self, seconds: float = TIMEOUT) -> list[int]:
        deadline = time.monotonic() + seconds
        for process in self.processes:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pytest.fail(f"torchrun did not finish within {seconds} s:\n{self.read()}")
        return [process.returncode for process in self.processes]

    def read(self, name: str | None = None) -> str:
        paths = [self.logs / f"{name}.log"] if name else sorted(self.logs.glob("*.log"))
        return "".join(f"--- {path.name}\n{path.read_text(errors='replace')}" for path in paths)

    def kill_all(self) -> None:
        """SIGKILL every launch's process group, then every worker left (each has its own session)."""
        for process in self.processes:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
        for pid, _ in _tagged(self.tag):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


def _poll(run: Launches, probe: Callable[[], Any], what: str) -> Any:
    """Call ``probe`` until it answers (not None or False); fail if torchrun ends first or TIMEOUT passes."""
    deadline = time.monotonic() + TIMEOUT
    while not (answer := probe()):
        assert run.processes[0].poll() is None, f"torchrun ended before {what}:\n{run.read()}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)
    return answer


@contextlib.contextmanager
def launches(logs: Path) -> Iterator[Launches]:
    logs.mkdir(parents=True, exist_ok=True)
    started = Launches(logs)
    try:
        yield started
    finally:
        started.kill_all()


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(out / "checkpoint.pt", require_training=True)["model"]


def _history(out: Path) -> list[dict]:
    """The per-epoch metrics without the wall-clock seconds."""
    history = json.loads((out / "metrics.json").read_text())["history"]
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history]


def _assert_same_weights(out: Path, reference: Path) -> None:
    weights, expected = _weights(out), _weights(reference)
    assert weights.keys() == expected.keys()
    differ = [name for name, value in expected.items() if not torch.equal(weights[name], value)]
    assert not differ, f"weights differ from {reference.name}'s: {differ}"


@pytest.fixture(scope="module")
def one_node(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference: one agent, two processes, uninterrupted."""
    work = tmp_path_factory.mktemp("one_node")
    with launches(work / "logs") as run:
        run.torchrun("one_node", _c10d(1, 2, "one-node", _free_port()), data_dir, work / "out")
        assert run.wait() == [0], run.read()
    metrics = json.loads((work / "out" / "metrics.json").read_text())
    assert metrics["processes"] == 2 and metrics["steps"] == 2 * STEPS_PER_EPOCH
    state = load_checkpoint(work / "out" / "checkpoint.pt", require_training=True)
    assert state["training"]["complete"] and state["training"]["world_size"] == 2
    return work / "out"


@pytest.mark.subprocess
@pytest.mark.slow
@_needs_proc
def test_two_nodes_on_one_machine_equal_one_node(data_dir: Path, one_node: Path, tmp_path: Path) -> None:
    out, port = tmp_path / "out", _free_port()
    with launches(tmp_path / "logs") as run:
        for node in ("node_a", "node_b"):  # the same command on each "node"
            run.torchrun(node, _c10d(2, 1, "two-nodes", port), data_dir, out)
        assert run.wait() == [0, 0], run.read()
        logs = [run.read("node_a"), run.read("node_b")]
    # Each agent started one process, and the job had two: the agents met. Rank 0 alone printed.
    headers = [log.count("(2 processes, cpu)") for log in logs]
    assert sorted(headers) == [0, 1], run.read()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["processes"] == 2 and metrics["steps"] == 2 * STEPS_PER_EPOCH
    _assert_same_weights(out, one_node)
    assert _history(out) == _history(one_node)


@pytest.fixture(scope="module")
def restarted(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, int]:
    """A run whose rank-1 worker is SIGKILLed mid-epoch 1, under ``--max-restarts 1``: (out, torchrun's log, the
    killed PID)."""
    work = tmp_path_factory.mktemp("restarted")
    out = work / "out"
    with launches(work / "logs") as run:
        # Each checkpoint write pauses 0.5 s before its rename: the kill lands in epoch 1, after a checkpoint.
        # TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1: see gru_lib.distributed._check_restartable.
        run.torchrun("elastic", ["--standalone", "--nproc-per-node", "2", "--max-restarts", "1"], data_dir, out,
                     GRU_LIB_CHECKPOINT_SLEEP="0.5", LOGLEVEL="INFO", TORCH_DISABLE_SHARE_RDZV_TCP_STORE="1")
        victim = _poll(run, lambda: run.worker(rank=1), "the rank-1 worker")
        _poll(run, lambda: (out / "checkpoint.pt").exists(), "the first checkpoint")
        os.kill(victim, signal.SIGKILL)
        assert run.wait() == [0], run.read()
        return out, run.read(), victim


@pytest.mark.subprocess
@pytest.mark.slow
@_needs_proc
def test_killed_worker_is_restarted_and_resumes_to_the_same_weights(
    restarted: tuple[Path, str, int], one_node: Path
) -> None:
    out, log, victim = restarted
    # torchrun saw the killed worker fail and restarted the group once; the new rank 0 resumed mid-epoch 1.
    assert re.search(rf"failed \(exitcode: -9\) local_rank: 1 \(pid: {victim}\)", log), log
    assert "Worker group FAILED. 1/1 attempts left; will restart worker group" in log, log
    resumed = re.findall(r"resuming from (\S+): epoch (\d+), step (\d+)", log)
    assert len(resumed) == 1, log
    path, epoch, step = resumed[0]
    assert Path(path) == out / "checkpoint.pt"
    assert epoch == "1" and 0 < int(step) < STEPS_PER_EPOCH and int(step) % 4 == 0, resumed
    _assert_same_weights(out, one_node)
    evaluation = ["epoch", "step", "lr", "eval_loss", "eval_accuracy", "eval_macro_f1"]
    assert [{k: row[k] for k in evaluation} for row in _history(out)] == [
        {k: row[k] for k in evaluation} for row in _history(one_node)]


@pytest.mark.subprocess
@pytest.mark.slow
@_needs_proc
def test_training_metrics_of_the_interrupted_epoch_survive_the_restart(
    restarted: tuple[Path, str, int], one_node: Path
) -> None:
    assert _history(restarted[0]) == _history(one_node)


def test_resume_on_restart_needs_allowed_restarts_and_a_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checkpoint = tmp_path / "checkpoint.pt"
    monkeypatch.delenv("TORCHELASTIC_MAX_RESTARTS", raising=False)
    checkpoint.write_bytes(b"")
    assert not resume_on_restart(checkpoint)  # plain python, or torchrun without restarts: --resume decides
    monkeypatch.setenv("TORCHELASTIC_MAX_RESTARTS", "0")
    assert not resume_on_restart(checkpoint)
    monkeypatch.setenv("TORCHELASTIC_MAX_RESTARTS", "1")
    assert resume_on_restart(checkpoint)
    checkpoint.unlink()
    assert not resume_on_restart(checkpoint)  # the first attempt, before any checkpoint: a fresh run
    monkeypatch.setenv("TORCHELASTIC_MAX_RESTARTS", "one")
    with pytest.raises(GruLibError, match="TORCHELASTIC_MAX_RESTARTS='one'"):
        resume_on_restart(checkpoint)


def test_restarts_with_the_agents_shared_store_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "TORCHELASTIC_MAX_RESTARTS": "1",
                        "TORCHELASTIC_USE_AGENT_STORE": "True"}.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(GruLibError, match="needs TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1"):
        init_distributed(device="cpu")
    assert not torch.distributed.is_initialized()
