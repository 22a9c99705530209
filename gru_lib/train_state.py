"""Chapter 5: where a training run stands, and how that goes to and from a checkpoint.

:class:`TrainState` is the part of a run that changes as it trains: the epoch, the position in the epoch's
batch order (``batch_in_epoch``: the sampler rebuilds the order from the seed and the epoch), the step, the
history of finished epochs, the running sums of the current one and the random states. With the weights and
the optimizer, scheduler and grad-scaler states it is everything an exact resume needs: a run stopped anywhere
and resumed ends with the same weights and metrics as an uninterrupted one (``tests/test_faults.py``).
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from gru_lib.checkpoint import capture_rng_state, restore_rng_state
from gru_lib.config import TrainConfig
from gru_lib.distributed import DistContext
from gru_lib.errors import CheckpointError
from gru_lib.text import EncodedDataset

__all__ = ["EpochTotals", "TrainState", "check_resume_config", "check_optimizer_state", "every_rank_rng",
           "every_rank_totals", "gather_rows", "rows_fingerprint", "check_rows_fingerprint"]

# Settings that may change when a run is resumed: they do not change what is computed.
RESUMABLE_CHANGES = frozenset({"checkpoint_every", "eval_batch_size"})


@dataclass
class EpochTotals:
    """Running sums over the current epoch's steps (this rank's share): loss x rows, correct rows, rows and
    seconds spent in optimisation steps (checkpoints and evaluation not included)."""

    loss: float = 0.0
    correct: int = 0
    count: int = 0
    seconds: float = 0.0


@dataclass
class TrainState:
    """Where a run stands (module docstring). ``history`` holds one dictionary per finished epoch."""

    epoch: int = 0
    batch_in_epoch: int = 0
    step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    totals: EpochTotals = field(default_factory=EpochTotals)

    def next_epoch(self) -> None:
        self.epoch, self.batch_in_epoch, self.totals = self.epoch + 1, 0, EpochTotals()

    def to_checkpoint(self, rng: list[dict[str, Any]], running: list[dict[str, Any]], **states: Any
                      ) -> dict[str, Any]:
        """The checkpoint's ``training`` entry: this state, the random states and running sums of every rank
        (``rng``, ``running``: one entry per rank) and the other ``states`` (optimizer, scheduler, scaler,
        steps_per_epoch, world_size, complete)."""
        return {"epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch, "step": self.step,
                "history": self.history, "running": running, "rng": rng, **states}

    @classmethod
    def from_checkpoint(cls, training: dict[str, Any], ctx: DistContext, path: Path) -> TrainState:
        """The state a checkpoint's ``training`` entry holds; restores this rank's random states. A bad entry
        raises :class:`CheckpointError` naming ``path``."""
        try:
            running = training["running"]  # one entry per rank (a single dict in older checkpoints)
            if isinstance(running, list):
                running = running[ctx.rank] if len(running) == ctx.world_size else running[0]
            state = cls(int(training["epoch"]), int(training["batch_in_epoch"]), int(training["step"]),
                        list(training["history"]), EpochTotals(**running))
            if min(state.epoch, state.batch_in_epoch, state.step) < 0:
                raise ValueError(f"negative position: epoch {state.epoch}, batch {state.batch_in_epoch}, "
                                 f"step {state.step}")
            rng = training["rng"]
            restore_rng_state(rng[ctx.rank] if len(rng) == ctx.world_size else rng[0])
        except (KeyError, ValueError, TypeError, RuntimeError, IndexError) as error:
            raise CheckpointError(f"{path}: bad training state ({error})") from None
        return state


def gather_rows(ctx: DistContext, tensor: Tensor) -> list[Tensor]:
    """Every rank's copy of a 1-D tensor of the same length (an all-gather through all_reduce_sum)."""
    if ctx.world_size == 1:
        return [tensor]
    buffer = torch.zeros(ctx.world_size, tensor.numel(), dtype=torch.int64)
    buffer[ctx.rank] = tensor.to(torch.int64).cpu()
    ctx.all_reduce_sum(buffer)
    return [row.to(tensor.dtype) for row in buffer]


def every_rank_totals(ctx: DistContext, totals: EpochTotals) -> list[dict[str, Any]]:
    """Every rank's running sums of the current epoch, in rank order (every rank must call it): a resumed
    rank continues its own sums, so the epoch's training loss and accuracy equal an uninterrupted run's."""
    if ctx.world_size == 1:
        return [asdict(totals)]
    buffer = torch.zeros(ctx.world_size, 4, dtype=torch.float64)  # x + 0.0 is exact: the sums arrive unchanged
    buffer[ctx.rank] = torch.tensor([totals.loss, totals.correct, totals.count, totals.seconds], dtype=torch.float64)
    ctx.all_reduce_sum(buffer)
    return [asdict(EpochTotals(float(row[0]), int(row[1]), int(row[2]), float(row[3]))) for row in buffer]


def every_rank_rng(ctx: DistContext) -> list[dict[str, Any]]:
    """The random states of every rank (each rank's own torch state; every rank must call it)."""
    rows = gather_rows(ctx, torch.get_rng_state())
    states = []
    for row in rows:
        state = capture_rng_state()
        state["torch"] = row.to(torch.uint8)
        states.append(state)
    return states


def check_resume_config(stored: dict[str, Any], config: TrainConfig, path: Path) -> None:
    """Refuse to resume with settings that change what is computed (all but :data:`RESUMABLE_CHANGES`)."""
    differences = [
        f"{key}={stored.get(key)!r} (now {value!r})"
        for key, value in config.to_dict().items()
        if key not in RESUMABLE_CHANGES and stored.get(key) != value
    ]
    if differences:
        raise CheckpointError(
            f"{path}: incompatible with this run's settings: it was trained with {', '.join(differences)}"
        )


def check_optimizer_state(optimizer: torch.optim.Optimizer, path: Path) -> None:
    """After ``optimizer.load_state_dict``: refuse (naming ``path``) per-parameter state tensors (AdamW's
    moments) whose shape is not their parameter's, or that hold NaN or infinite values. ``load_state_dict``
    checks only the number of parameters, so such a state would otherwise fail (or diverge) at the first step."""
    for group in optimizer.param_groups:
        for index, param in enumerate(group["params"]):
            for name, value in optimizer.state.get(param, {}).items():
                if not isinstance(value, Tensor) or value.dim() == 0:
                    continue  # the step count
                if value.shape != param.shape:
                    raise CheckpointError(f"{path}: bad training state (optimizer {name} of parameter {index} has "
                                          f"shape {tuple(value.shape)}, the parameter {tuple(param.shape)})")
                if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                    raise CheckpointError(f"{path}: bad training state (optimizer {name} of parameter {index} "
                                          "holds NaN or infinite values)")


def rows_fingerprint(dataset: EncodedDataset) -> str:
    """SHA-256 of the training rows as the model sees them (labels, lengths and token ids, in order): stored in
    the checkpoint so that a resume on other rows is refused even when the number of steps per epoch agrees."""
    digest = hashlib.sha256()
    digest.update(np.asarray(dataset.labels, dtype=np.int64).tobytes())
    digest.update(np.fromiter(map(len, dataset.ids), dtype=np.int64, count=len(dataset.ids)).tobytes())
    digest.update(np.fromiter(itertools.chain.from_iterable(dataset.ids), dtype=np.int64).tobytes())
    return digest.hexdigest()


def check_rows_fingerprint(training: dict[str, Any], fingerprint: str, path: Path) -> None:
    """Refuse to resume on training rows other than the checkpoint's (checkpoints without a fingerprint, written
    before it was stored, are not checked)."""
    stored = training.get("rows_fingerprint")
    if stored is not None and stored != fingerprint:
        raise CheckpointError(f"{path}: saved from other training rows than this run's (fingerprint "
                              f"{str(stored)[:12]}, now {fingerprint[:12]}): give the same --data and --train-rows")
