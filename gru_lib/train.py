"""Chapter 5: training the news classifier: seeded, checkpointed, resumable, data-parallel ready.

One optimisation step on a batch of (ids, lengths, labels) is :func:`optimization_step`::

    loss = cross_entropy(model(ids, lengths), labels, label_smoothing)
    g    = clip(grad loss, max_grad_norm)                     (global L2 norm)
    AdamW(lr_t, weight_decay) step with g
    lr_t = lr * schedule(t)    linear warmup over the first ``warmup`` fraction of the steps, then cosine
                               (or linear) decay to 0, or constant

:func:`train` reads top to bottom: open the run (data, vocabulary, model, optimizer, or all of them from a
checkpoint), then for each epoch train, evaluate, record and checkpoint. ``checkpoint_every`` adds a checkpoint
every N steps. A checkpoint holds all an exact resume needs (:mod:`gru_lib.train_state`), so a run stopped
anywhere and resumed ends with the same weights and metrics as an uninterrupted run of the same seed.
SIGTERM makes the trainer finish its current step, save a checkpoint and stop (:class:`TrainingInterrupted`).
A non-finite loss stops training before the step is taken (:class:`NonFiniteLossError`), so the last
checkpoint on disk is the last good one.

Data parallel (``torchrun``): pass the :class:`gru_lib.distributed.DistContext`; each rank trains on its
share of the length-bucketed batches (every rank gets the same number), DDP averages the gradients, training
and evaluation counts are all-reduced, and only rank 0 logs and writes files.
"""

from __future__ import annotations

import functools
import math
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from gru_lib.checkpoint import checkpoint_path, load_checkpoint, save_checkpoint
from gru_lib.config import TrainConfig
from gru_lib.data import CLASSES, NewsExample
from gru_lib.distributed import DistContext, join_context, unwrap_model, wrap_model
from gru_lib.errors import CheckpointError, GruLibError
from gru_lib.evaluate import evaluate_model, load_classifier, load_weights, predict_logits
from gru_lib.metrics import classification_report
from gru_lib.models import NewsClassifier
from gru_lib.precision import Precision, resolve_precision
from gru_lib.prepare import build_classifier, build_vocab, encode_examples, split_validation, tokenize_examples
from gru_lib.repro import seed_everything
from gru_lib.text import BucketBatchSampler, EncodedDataset, Vocab, collate_padded
from gru_lib.train_state import (TrainState, check_optimizer_state, check_resume_config, check_rows_fingerprint,
                                 every_rank_rng, every_rank_totals, rows_fingerprint)

__all__ = [
    "TrainConfig",
    "TrainResult",
    "TrainingInterrupted",
    "NonFiniteLossError",
    "TrainingRun",
    "train",
    "open_run",
    "optimization_step",
    "train_epoch",
    "evaluate_epoch",
    "score",
    "make_optimizer",
    "lr_factor",
    # the data and evaluation helpers the chapters import from here (their homes: prepare, evaluate)
    "tokenize_examples",
    "build_vocab",
    "encode_examples",
    "predict_logits",
    "evaluate_model",
    "load_classifier",
]


class TrainingInterrupted(Exception):
    """Training stopped on request (SIGTERM, or SIGINT: Ctrl-C) after saving a checkpoint; ``--resume``
    continues it. ``signum`` is the signal that asked (the command line exits with 128 + it)."""

    def __init__(self, message: str, checkpoint: Path | None, signum: int = signal.SIGTERM) -> None:
        super().__init__(message)
        self.checkpoint = checkpoint
        self.signum = signum


class NonFiniteLossError(GruLibError):
    """The loss (or, at a checkpoint, a weight) became inf or NaN; training stopped without overwriting the
    last good checkpoint."""


@dataclass
class TrainResult:
    model: NewsClassifier
    vocab: Vocab
    config: TrainConfig
    history: list[dict[str, Any]]
    report: dict[str, Any]  # classification_report on eval_examples after the last epoch
    train_seconds: float
    steps: int
    # init_seconds; train_rows and validation_rows (val_fraction); validation: the last epoch's report on them
    extra: dict[str, Any] = field(default_factory=dict)


def lr_factor(step: int, total_steps: int, warmup: float, schedule: str) -> float:
    """The multiplier of the base learning rate for optimisation step ``step`` (0-based)."""
    warmup_steps = int(warmup * total_steps)
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    progress = min(max(progress, 0.0), 1.0)
    if schedule == "linear":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW with ``weight_decay`` on the weight matrices only: none on biases and the embedding table (rare
    words would be pulled to zero)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        (no_decay if param.dim() < 2 or name.startswith("embedding.") else decay).append(param)
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr)


class _StopFlag:
    """Set by SIGTERM or SIGINT (Ctrl-C); checked between steps, where the run saves a checkpoint and stops,
    so Ctrl-C loses nothing. A second Ctrl-C stops at once (KeyboardInterrupt). Installs its handlers only in
    the main thread."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, enabled: bool) -> None:
        self.requested = False
        self.signum: int = signal.SIGTERM
        self._previous: dict[int, Any] = {}
        self._installed = enabled and threading.current_thread() is threading.main_thread()

    def __enter__(self) -> _StopFlag:
        if self._installed:
            self._previous = {signum: signal.signal(signum, self._handle) for signum in self.SIGNALS}
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested, self.signum = True, signum

    def __exit__(self, *exc: object) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)


@dataclass
class TrainingRun:
    """Everything one run trains with, and where it stands (``state``). ``model`` may be DDP-wrapped;
    ``inner`` is the classifier itself. ``checkpoint``: where checkpoints go (None: nowhere)."""

    config: TrainConfig
    ctx: DistContext
    precision: Precision
    vocab: Vocab
    train_set: EncodedDataset
    eval_set: EncodedDataset
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    sampler: BucketBatchSampler
    state: TrainState
    checkpoint: Path | None
    init_seconds: float = 0.0
    stop: _StopFlag = field(default_factory=lambda: _StopFlag(False))
    stop_agreed: bool = False  # every rank has seen the stop request (all-reduced with the loss check)
    rows: str = ""  # the training rows' fingerprint (train_state.rows_fingerprint), stored in checkpoints

    @property
    def inner(self) -> NewsClassifier:
        return unwrap_model(self.model)  # type: ignore[return-value]

    def kept(self) -> str:
        """What a NonFiniteLossError says about the checkpoint on disk."""
        if self.checkpoint is not None and self.checkpoint.exists():
            return f"the last good checkpoint {self.checkpoint} was kept"
        return "no checkpoint had been written yet"

    def check_loss(self, loss: Tensor) -> None:
        """Raise :class:`NonFiniteLossError` on every rank if any rank's loss is inf/NaN; learn, in the same
        all-reduce, whether any rank was asked to stop."""
        flags = torch.tensor([0.0 if torch.isfinite(loss) else 1.0, 1.0 if self.stop.requested else 0.0])
        self.ctx.all_reduce_sum(flags)
        self.stop_agreed = bool(flags[1] > 0)
        if flags[0] > 0:
            raise NonFiniteLossError(
                f"non-finite loss ({loss.item()}) at epoch {self.state.epoch + 1}, step {self.state.step + 1}: "
                f"training stopped before this step; {self.kept()} (try a lower --lr or --max-grad-norm)")

    def save(self, complete: bool = False) -> None:
        """Write the checkpoint (rank 0 writes; every rank joins the RNG gather). Refuses non-finite weights:
        a step with a finite loss can still leave them, and they must not replace the last good checkpoint."""
        if self.checkpoint is None:
            return
        bad = [name for name, p in self.inner.named_parameters() if not bool(torch.isfinite(p).all())]
        if bad:  # replicas are identical, so every rank reaches the same verdict
            raise NonFiniteLossError(
                f"non-finite weights ({bad[0]}) after step {self.state.step}: training diverged and stopped; "
                f"{self.kept()} (try a lower --lr or --max-grad-norm)")
        rng, running = every_rank_rng(self.ctx), every_rank_totals(self.ctx, self.state.totals)
        if not self.ctx.is_main:
            return
        training = self.state.to_checkpoint(
            rng, running, steps_per_epoch=len(self.sampler), world_size=self.ctx.world_size, complete=complete,
            rows_fingerprint=self.rows,
            optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict(),
            scaler=self.scaler.state_dict())
        save_checkpoint({"model": self.inner.state_dict(), "model_config": self.inner.config(),
                         "vocab": self.vocab.to_dict(), "train_config": self.config.to_dict(),
                         "training": training}, self.checkpoint)

    def interrupt(self, when: str) -> TrainingInterrupted:
        name = signal.Signals(self.stop.signum).name
        return TrainingInterrupted(f"stopped by {name} {when}; checkpoint saved to {self.checkpoint}: continue "
                                   "with --resume", self.checkpoint, self.stop.signum)


def optimization_step(
    run: TrainingRun, ids: Tensor, lengths: Tensor, labels: Tensor
) -> tuple[Tensor, Tensor]:
    """One step on one batch: forward, loss, backward, clipping, optimiser step,
    schedule. Under fp16 the scaler multiplies the loss by S before backward and
    unscales the gradients before clipping; it skips the step when a gradient is
    inf/NaN. Returns the (detached) loss and logits."""
    optimizer, scaler, config = run.optimizer, run.scaler, run.config
    with run.precision.autocast():
        logits = run.model(ids, lengths)
    loss = F.cross_entropy(
        logits.float(), labels, label_smoothing=config.label_smoothing
    )
    run.check_loss(loss)  # a non-finite loss stops every rank before the step
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if config.max_grad_norm > 0:
        scaler.unscale_(optimizer)  # clip the true gradients
        nn.utils.clip_grad_norm_(run.model.parameters(), config.max_grad_norm)
    if scaler.is_enabled():
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    run.scheduler.step()
    return loss.detach(), logits.detach()


def train_epoch(run: TrainingRun, *, on_step: Callable[[int, nn.Module], None] | None = None,
                progress: bool = False) -> None:
    """The optimisation steps of epoch ``run.state.epoch`` from batch ``run.state.batch_in_epoch`` on. Between
    steps: a checkpoint every ``checkpoint_every`` steps, and on SIGTERM a checkpoint and
    :class:`TrainingInterrupted`. ``on_step(step, model)`` runs after each step."""
    state, device = run.state, run.ctx.device
    run.sampler.set_epoch(state.epoch)
    batches = list(run.sampler)
    bar = _progress_bar(len(batches), state, run.config.epochs) if progress else None
    run.model.train()
    with join_context(run.model, run.ctx):
        for index in range(state.batch_in_epoch, len(batches)):
            started = time.perf_counter()
            ids, lengths, labels = collate_padded([run.train_set[i] for i in batches[index]], run.vocab.pad_index)
            labels = labels.to(device)
            loss, logits = optimization_step(run, ids.to(device), lengths, labels)
            state.step, state.batch_in_epoch = state.step + 1, index + 1
            state.totals.loss += loss.item() * len(labels)
            state.totals.correct += int((logits.argmax(dim=1) == labels).sum())
            state.totals.count += len(labels)
            state.totals.seconds += time.perf_counter() - started
            if bar is not None:
                bar.update(1)
            if on_step is not None:
                on_step(state.step, run.inner)
            if index + 1 < len(batches):
                _checkpoint_between_steps(run)
    if bar is not None:
        bar.close()


def _checkpoint_between_steps(run: TrainingRun) -> None:
    # Ranks agree on stopping through the all-reduced flag; a single process can stop at once.
    if run.stop_agreed or (run.ctx.world_size == 1 and run.stop.requested):
        run.save()
        raise run.interrupt(f"at epoch {run.state.epoch + 1}, step {run.state.step}")
    every = run.config.checkpoint_every
    if every and run.state.step % every == 0:
        run.save()


def _progress_bar(total: int, state: TrainState, epochs: int) -> Any:
    from tqdm import tqdm  # loaded only when a bar is shown

    return tqdm(total=total, initial=state.batch_in_epoch, desc=f"epoch {state.epoch + 1}/{epochs}", leave=False,
                dynamic_ncols=True)


def evaluate_epoch(run: TrainingRun) -> dict[str, Any]:
    """The history row of the epoch just trained: the training loss and accuracy (all ranks' rows), the
    learning rate, the evaluation metrics and report (``eval``), and the seconds spent in steps."""
    totals = run.state.totals
    sums = torch.tensor([totals.loss, totals.correct, totals.count], dtype=torch.float64)
    run.ctx.all_reduce_sum(sums)
    cm, eval_loss = evaluate_model(run.model, run.eval_set, batch_size=run.config.eval_batch_size, ctx=run.ctx,
                                   pad_index=run.vocab.pad_index)
    report = classification_report(cm, CLASSES)
    return {
        "epoch": run.state.epoch + 1,
        "step": run.state.step,
        "lr": run.optimizer.param_groups[0]["lr"],
        "train_loss": float(sums[0] / sums[2]),
        "train_accuracy": float(sums[1] / sums[2]),
        "eval_loss": eval_loss,
        "eval_accuracy": report["accuracy"],
        "eval_macro_f1": report["macro_f1"],
        "seconds": totals.seconds,
        "eval": report,
    }


def _describe(row: dict[str, Any], epochs: int) -> str:
    return (f"epoch {row['epoch']}/{epochs}  train loss {row['train_loss']:.4f} acc {row['train_accuracy']:.4f}  "
            f"eval loss {row['eval_loss']:.4f} acc {row['eval_accuracy']:.4f} macro-F1 {row['eval_macro_f1']:.4f}"
            f"  ({row['seconds']:.1f}s)")


def _stored_run(checkpoint: Path | None, config: TrainConfig) -> dict[str, Any]:
    """The checkpoint to resume from, checked against ``config``."""
    if checkpoint is None:
        raise GruLibError("resume needs an output directory")
    if not checkpoint.exists():
        raise CheckpointError(f"{checkpoint}: no checkpoint to resume from")
    stored = load_checkpoint(checkpoint, require_training=True)
    check_resume_config(stored["train_config"], config, checkpoint)
    return stored


def _stored_vocab(stored: dict[str, Any], checkpoint: Path) -> Vocab:
    try:
        return Vocab.from_dict(stored["vocab"])
    except (ValueError, TypeError) as error:
        raise CheckpointError(f"{checkpoint}: bad vocabulary ({error})") from None


def _restore_weights(model: NewsClassifier, stored: dict[str, Any], checkpoint: Path) -> None:
    built, saved = model.config(), stored["model_config"]
    differences = [f"{k} {saved.get(k)!r} vs {v!r}" for k, v in built.items() if saved.get(k) != v]
    if differences:
        raise CheckpointError(f"{checkpoint}: its model configuration and training configuration do not match "
                              f"({', '.join(differences)})")
    load_weights(model, stored["model"], checkpoint)


def _resume_state(run: TrainingRun, stored: dict[str, Any]) -> TrainState:
    """The run's position from the checkpoint; loads the optimizer, scheduler and scaler states into ``run``."""
    training, path = stored["training"], run.checkpoint
    try:
        run.optimizer.load_state_dict(training["optimizer"])
        run.scheduler.load_state_dict(training["scheduler"])
        run.scaler.load_state_dict(training["scaler"])
    except (KeyError, ValueError, TypeError, RuntimeError, IndexError) as error:
        raise CheckpointError(f"{path}: bad training state ({error})") from None
    check_optimizer_state(run.optimizer, path)  # type: ignore[arg-type]
    if int(training.get("steps_per_epoch", len(run.sampler))) != len(run.sampler):
        raise CheckpointError(f"{path}: saved with {training.get('steps_per_epoch')} steps per epoch, this run has "
                              f"{len(run.sampler)} (different data or number of processes)")
    check_rows_fingerprint(training, run.rows, path)  # type: ignore[arg-type]
    return TrainState.from_checkpoint(training, run.ctx, path)  # type: ignore[arg-type]


def open_run(config: TrainConfig, train_examples: Sequence[NewsExample], eval_examples: Sequence[NewsExample],
             ctx: DistContext, *, out_dir: str | Path | None = None, resume: bool = False) -> TrainingRun:
    """Everything a run needs, from the rows (a fresh run) or from the checkpoint in ``out_dir`` (``resume``):
    vocabulary, encoded rows, model (PPMI embeddings for a fresh run), optimizer, schedule, sampler, state."""
    checkpoint = checkpoint_path(out_dir) if out_dir is not None else None
    precision = resolve_precision(config.precision, ctx.device)
    stored = _stored_run(checkpoint, config) if resume else None
    tokens = tokenize_examples(train_examples, config)  # once, for the vocabulary and the ids
    vocab = build_vocab(train_examples, config, tokens=tokens) if stored is None else _stored_vocab(stored, checkpoint)
    train_set = encode_examples(train_examples, vocab, config, tokens=tokens)
    model, init_seconds = build_classifier(vocab, config, train_set.ids if stored is None else None)
    if stored is not None:
        _restore_weights(model, stored, checkpoint)  # type: ignore[arg-type]
    model = model.to(ctx.device)
    optimizer = make_optimizer(model, config)
    sampler = BucketBatchSampler(train_set.lengths, config.batch_size, shuffle=True, seed=config.seed,
                                 num_replicas=ctx.world_size, rank=ctx.rank)
    schedule = functools.partial(lr_factor, total_steps=config.epochs * len(sampler), warmup=config.warmup,
                                 schedule=config.schedule)
    run = TrainingRun(config, ctx, precision, vocab, train_set, encode_examples(eval_examples, vocab, config),
                      model, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule),
                      precision.grad_scaler(), sampler, TrainState(), checkpoint, init_seconds,
                      rows=rows_fingerprint(train_set) if checkpoint is not None else "")
    if stored is not None:
        run.state = _resume_state(run, stored)
    run.model = wrap_model(model, ctx)
    if checkpoint is not None and ctx.is_main:
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
    return run


def train(
    config: TrainConfig,
    train_examples: Sequence[NewsExample],
    eval_examples: Sequence[NewsExample],
    *,
    out_dir: str | Path | None = None,
    resume: bool = False,
    ctx: DistContext | None = None,
    progress: bool | None = None,
    log: Callable[[str], None] | None = print,
    on_step: Callable[[int, nn.Module], None] | None = None,
    handle_sigterm: bool = False,
    threads: int | None = None,
) -> TrainResult:
    """Train a :class:`NewsClassifier` on ``train_examples``, evaluating on
    ``eval_examples`` every epoch; or, with ``config.val_fraction > 0``, evaluating
    every epoch on rows held out of ``train_examples``
    (:func:`gru_lib.prepare.split_validation`) and on ``eval_examples`` once, at the
    end.

    ``out_dir``: where checkpoints go (none written when None); ``resume``: continue
    from its checkpoint. ``progress``: tqdm bars (default: only when stderr is a
    terminal); ``log``: one line per epoch (None: silent); ``on_step(step, model)``:
    called after each optimisation step (tests, notebooks); ``handle_sigterm``:
    SIGTERM or Ctrl-C saves a checkpoint and raises :class:`TrainingInterrupted`;
    ``threads``:
    the intra-op thread count to set (default: leave it). The model and batches live
    on ``ctx.device``. Returns the model (unwrapped), vocab, history and report.
    """
    ctx = ctx or DistContext()
    if not train_examples or not eval_examples:
        raise GruLibError(f"no {'training' if not train_examples else 'evaluation'} rows")
    seed_everything(config.seed, threads=threads)
    say = log if (log is not None and ctx.is_main) else None
    show_bars = ctx.is_main and (sys.stderr.isatty() if progress is None else progress)
    fit_rows, val_rows = split_validation(train_examples, config.val_fraction, config.seed)
    run = open_run(
        config, fit_rows, val_rows or eval_examples, ctx, out_dir=out_dir, resume=resume
    )
    if resume and say:
        state = run.state
        say(f"resuming from {run.checkpoint}: epoch {state.epoch + 1}, step {state.step}")
    with _StopFlag(handle_sigterm) as run.stop:
        while run.state.epoch < config.epochs:
            train_epoch(run, on_step=on_step, progress=show_bars)
            run.state.history.append(evaluate_epoch(run))
            if say:
                say(_describe(run.state.history[-1], config.epochs))
            run.state.next_epoch()
            run.save(complete=run.state.epoch == config.epochs)
            if run.stop.requested and run.state.epoch < config.epochs:
                raise run.interrupt(f"after epoch {run.state.epoch}")
    history = run.state.history
    validation = history[-1]["eval"] if val_rows else None
    return TrainResult(
        model=run.inner, vocab=run.vocab, config=config, history=history,
        report=score(run, eval_examples) if val_rows else history[-1]["eval"],
        train_seconds=sum(h["seconds"] for h in history), steps=run.state.step,
        extra={"init_seconds": run.init_seconds, "train_rows": len(fit_rows),
               "validation_rows": len(val_rows), "validation": validation},
    )


def score(run: TrainingRun, examples: Sequence[NewsExample]) -> dict[str, Any]:
    """The classification report of the run's model on ``examples`` (all ranks' shares counted)."""
    dataset = encode_examples(examples, run.vocab, run.config)
    cm, _ = evaluate_model(run.model, dataset, batch_size=run.config.eval_batch_size, ctx=run.ctx,
                           pad_index=run.vocab.pad_index)
    return classification_report(cm, CLASSES)
