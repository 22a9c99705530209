"""Chapter 5: training the news classifier: seeded, checkpointed, resumable, data-parallel ready.

One optimisation step on a batch of (ids, lengths, labels)::

    loss = cross_entropy(model(ids, lengths), labels, label_smoothing)
    g    = clip(grad loss, max_grad_norm)                     (global L2 norm)
    AdamW(lr_t, weight_decay) step with g
    lr_t = lr * schedule(t)    linear warmup over the first ``warmup`` fraction of the steps, then cosine
                               (or linear) decay to 0, or constant

Every epoch ends with an evaluation (accuracy, macro-F1, confusion matrix) and a checkpoint; ``checkpoint_every``
adds one every N steps. A checkpoint holds all an exact resume needs (see :mod:`gru_lib.checkpoint`), so a run
stopped anywhere and resumed ends with the same weights and metrics as an uninterrupted run of the same seed.
SIGTERM makes the trainer finish its current step, save a checkpoint and stop (:class:`TrainingInterrupted`).
A non-finite loss stops training before the step is taken (:class:`NonFiniteLossError`), so the last
checkpoint on disk is the last good one.

Data parallel (``torchrun``): pass the :class:`gru_lib.distributed.DistContext`; each rank trains on its
share of the length-bucketed batches (every rank gets the same number), DDP averages the gradients, training
and evaluation counts are all-reduced, and only rank 0 logs and writes files.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from tqdm import tqdm

from gru_lib.checkpoint import (
    capture_rng_state,
    checkpoint_path,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from gru_lib.data import CLASSES, NewsExample, default_data_dir, load_ag_news
from gru_lib.distributed import DistContext, init_distributed, join_context, unwrap_model, wrap_model
from gru_lib.errors import CheckpointError, GruLibError
from gru_lib.embeddings import ppmi_embeddings
from gru_lib.metrics import classification_report, confusion_matrix
from gru_lib.models import BACKENDS, NewsClassifier, parse_pooling
from gru_lib.precision import PRECISIONS, optimizer_step, resolve_precision
from gru_lib.repro import seed_everything
from gru_lib.text import BucketBatchSampler, EncodedDataset, Vocab, collate_padded, numericalize, tokenize

__all__ = [
    "TrainConfig",
    "TrainResult",
    "TrainingInterrupted",
    "NonFiniteLossError",
    "train",
    "tokenize_examples",
    "build_vocab",
    "encode_examples",
    "predict_logits",
    "evaluate_model",
    "load_classifier",
    "lr_factor",
    "add_parser",
]

SCHEDULES: tuple[str, ...] = ("cosine", "linear", "constant")
EMBEDDING_INITS: tuple[str, ...] = ("ppmi", "random")


@dataclass
class TrainConfig:
    """Everything that defines a training run. The defaults are the book's recommended settings
    (chapter 5 and the ablations in the report that chose them)."""

    # data and vocabulary
    max_len: int = 64
    min_freq: int = 1
    max_vocab: int | None = None
    clean_text: bool = True
    # model
    embedding_init: str = "ppmi"
    embed_dim: int = 128
    hidden_size: int = 64
    num_layers: int = 1
    bidirectional: bool = True
    dropout: float = 0.5
    word_dropout: float = 0.2
    backend: str = "torch"
    pooling: str = "mean+max+emb"
    # optimisation
    epochs: int = 6
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 0.01
    warmup: float = 0.06
    schedule: str = "cosine"
    max_grad_norm: float = 1.0
    label_smoothing: float = 0.0
    # run
    seed: int = 0
    precision: str = "fp32"
    checkpoint_every: int = 0
    eval_batch_size: int = 256

    def __post_init__(self) -> None:
        checks = [
            (self.max_len >= 1, "max_len must be >= 1"),
            (self.min_freq >= 1, "min_freq must be >= 1"),
            (self.max_vocab is None or self.max_vocab >= 3, "max_vocab must be >= 3"),
            (self.embed_dim >= 1 and self.hidden_size >= 1 and self.num_layers >= 1, "sizes must be >= 1"),
            (0.0 <= self.dropout < 1.0, "dropout must be in [0, 1)"),
            (0.0 <= self.word_dropout < 1.0, "word_dropout must be in [0, 1)"),
            (self.backend in BACKENDS, f"backend must be one of {', '.join(BACKENDS)}"),
            (self.embedding_init in EMBEDDING_INITS, f"embedding_init must be one of {', '.join(EMBEDDING_INITS)}"),
            (self.epochs >= 1 and self.batch_size >= 1 and self.eval_batch_size >= 1,
             "epochs and batch sizes must be >= 1"),
            (self.lr > 0 and self.weight_decay >= 0, "lr must be > 0 and weight_decay >= 0"),
            (0.0 <= self.warmup < 1.0, "warmup is a fraction of the steps in [0, 1)"),
            (self.schedule in SCHEDULES, f"schedule must be one of {', '.join(SCHEDULES)}"),
            (self.max_grad_norm >= 0, "max_grad_norm must be >= 0 (0 disables clipping)"),
            (0.0 <= self.label_smoothing < 1.0, "label_smoothing must be in [0, 1)"),
            (self.precision in PRECISIONS, f"precision must be one of {', '.join(PRECISIONS)}"),
            (self.checkpoint_every >= 0, "checkpoint_every must be >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise GruLibError(f"invalid training configuration: {message}")
        try:
            parse_pooling(self.pooling)
        except ValueError as error:
            raise GruLibError(f"invalid training configuration: {error}") from None

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise GruLibError(f"unknown training setting(s): {', '.join(unknown)}")
        return cls(**values)


# Settings that may change when a run is resumed: they do not change what is computed.
_RESUMABLE_CHANGES = frozenset({"checkpoint_every", "eval_batch_size"})


class TrainingInterrupted(Exception):
    """Training stopped on request (SIGTERM) after saving a checkpoint; ``--resume`` continues it."""

    def __init__(self, message: str, checkpoint: Path | None) -> None:
        super().__init__(message)
        self.checkpoint = checkpoint


class NonFiniteLossError(GruLibError):
    """The loss (or, at a checkpoint, a weight) became inf or NaN; training stopped without overwriting the
    last good checkpoint."""


@dataclass
class TrainResult:
    model: NewsClassifier
    vocab: Vocab
    config: TrainConfig
    history: list[dict[str, Any]]
    report: dict[str, Any]  # classification_report on the evaluation set after the last epoch
    train_seconds: float
    steps: int
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


def tokenize_examples(examples: Sequence[NewsExample], config: TrainConfig) -> list[list[str]]:
    """The tokens of each text (``clean_text`` applied), uncut."""
    return [tokenize(e.text, clean=config.clean_text) for e in examples]


def build_vocab(
    examples: Sequence[NewsExample], config: TrainConfig, *, tokens: Sequence[Sequence[str]] | None = None
) -> Vocab:
    """The vocabulary of the training texts (``min_freq``, ``max_vocab``; tokens cut at ``max_len`` count too).
    ``tokens``: :func:`tokenize_examples` of ``examples`` when the caller has them already."""
    return Vocab.build(
        tokenize_examples(examples, config) if tokens is None else tokens,
        min_freq=config.min_freq,
        max_size=config.max_vocab,
    )


def encode_examples(
    examples: Sequence[NewsExample], vocab: Vocab, config: TrainConfig, *,
    tokens: Sequence[Sequence[str]] | None = None,
) -> EncodedDataset:
    """Token ids (cut at ``max_len``) and labels; ``tokens`` as in :func:`build_vocab`."""
    if tokens is None:
        return EncodedDataset.from_examples(examples, vocab, max_len=config.max_len, clean=config.clean_text)
    return EncodedDataset(numericalize(tokens, vocab, max_len=config.max_len), [e.label for e in examples])


def _model_for(vocab: Vocab, config: TrainConfig) -> NewsClassifier:
    return NewsClassifier(
        len(vocab),
        num_classes=len(CLASSES),
        embed_dim=config.embed_dim,
        hidden_size=config.hidden_size,
        num_layers=config.num_layers,
        bidirectional=config.bidirectional,
        dropout=config.dropout,
        backend=config.backend,
        pooling=config.pooling,
        padding_idx=vocab.pad_index,
        word_dropout=config.word_dropout,
        unk_idx=vocab.unk_index,
    )


@torch.no_grad()
def predict_logits(
    model: nn.Module, ids: Sequence[Sequence[int]], *, batch_size: int = 256, device: torch.device | None = None,
    pad_index: int = 0,
) -> Tensor:
    """Logits (N, C) of every sequence in ``ids``, in their order (batched by length, in eval mode)."""
    inner = unwrap_model(model)
    if device is None:
        device = next(inner.parameters()).device
    was_training = inner.training
    inner.eval()
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    chunks: list[Tensor] = []
    for start in range(0, len(order), batch_size):
        batch = [(ids[i], 0) for i in order[start : start + batch_size]]
        tokens, lengths, _ = collate_padded(batch, pad_index)
        chunks.append(inner(tokens.to(device), lengths).float().cpu())
    inner.train(was_training)
    if not chunks:
        return torch.empty(0, getattr(inner, "head").out_features)
    logits = torch.cat(chunks)
    out = torch.empty_like(logits)
    out[torch.tensor(order)] = logits
    return out


def evaluate_model(
    model: nn.Module, dataset: EncodedDataset, *, batch_size: int = 256, ctx: DistContext | None = None,
    num_classes: int = len(CLASSES), pad_index: int = 0,
) -> tuple[Tensor, float]:
    """Confusion matrix (C, C) and mean cross-entropy of ``model`` on ``dataset``. With several ranks each
    evaluates the indices ``rank::world_size`` and the counts are all-reduced: exact, no duplicates."""
    ctx = ctx or DistContext()
    share = list(range(ctx.rank, len(dataset), ctx.world_size))
    ids = [dataset.ids[i] for i in share]
    labels = torch.tensor([dataset.labels[i] for i in share], dtype=torch.long)
    logits = predict_logits(model, ids, batch_size=batch_size, pad_index=pad_index)
    cm = confusion_matrix(labels, logits.argmax(dim=1), num_classes) if share else torch.zeros(
        num_classes, num_classes, dtype=torch.long)
    loss_sum = F.cross_entropy(logits, labels, reduction="sum").double() if share else torch.zeros((), dtype=torch.float64)
    totals = torch.cat([cm.reshape(-1).double(), loss_sum.reshape(1)])
    ctx.all_reduce_sum(totals)
    cm = totals[:-1].round().long().reshape(num_classes, num_classes)
    return cm, float(totals[-1]) / max(1, int(cm.sum()))


class _StopFlag:
    """Set by SIGTERM; checked between steps. Installs its handler only in the main thread."""

    def __init__(self, enabled: bool) -> None:
        self.requested = False
        self._previous: Any = None
        self._installed = enabled and threading.current_thread() is threading.main_thread()

    def __enter__(self) -> _StopFlag:
        if self._installed:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True

    def __exit__(self, *exc: object) -> None:
        if self._installed:
            signal.signal(signal.SIGTERM, self._previous)


def _gather_rows(ctx: DistContext, tensor: Tensor) -> list[Tensor]:
    """Every rank's copy of a 1-D tensor of the same length (an all-gather through all_reduce_sum)."""
    if ctx.world_size == 1:
        return [tensor]
    buffer = torch.zeros(ctx.world_size, tensor.numel(), dtype=torch.int64)
    buffer[ctx.rank] = tensor.to(torch.int64).cpu()
    ctx.all_reduce_sum(buffer)
    return [row.to(tensor.dtype) for row in buffer]


def _check_resume_config(stored: dict[str, Any], config: TrainConfig, path: Path) -> None:
    wanted = asdict(config)
    differences = [
        f"{key}={stored.get(key)!r} (now {value!r})"
        for key, value in wanted.items()
        if key not in _RESUMABLE_CHANGES and stored.get(key) != value
    ]
    if differences:
        raise CheckpointError(
            f"{path}: incompatible with this run's settings: it was trained with {', '.join(differences)}"
        )


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
    """Train a :class:`NewsClassifier` on ``train_examples``, evaluating on ``eval_examples`` every epoch.

    ``out_dir``: where checkpoints go (none written when None); ``resume``: continue from its checkpoint.
    ``progress``: tqdm bars (default: only when stderr is a terminal); ``log``: one line per epoch (None:
    silent); ``on_step(step, model)``: called after each optimisation step (tests, notebooks);
    ``handle_sigterm``: SIGTERM saves a checkpoint and raises :class:`TrainingInterrupted`.
    The model and batches live on ``ctx.device``. Returns the model (unwrapped), vocab, history and report.
    """
    ctx = ctx or DistContext()
    device = ctx.device
    precision = resolve_precision(config.precision, device)
    if not train_examples:
        raise GruLibError("no training rows")
    if not eval_examples:
        raise GruLibError("no evaluation rows")
    seed_everything(config.seed, threads=threads)
    main = ctx.is_main
    say = log if (log is not None and main) else (lambda _message: None)
    if progress is None:
        progress = sys.stderr.isatty()

    ckpt_file = checkpoint_path(out_dir) if out_dir is not None else None
    state: dict[str, Any] | None = None
    train_tokens = tokenize_examples(train_examples, config)  # once, for the vocabulary and the ids
    if resume:
        if ckpt_file is None:
            raise GruLibError("resume needs an output directory")
        if not ckpt_file.exists():
            raise CheckpointError(f"{ckpt_file}: no checkpoint to resume from")
        state = load_checkpoint(ckpt_file, require_training=True)
        _check_resume_config(state["train_config"], config, ckpt_file)
        try:
            vocab = Vocab.from_dict(state["vocab"])
        except (ValueError, TypeError) as error:
            raise CheckpointError(f"{ckpt_file}: bad vocabulary ({error})") from None
    else:
        vocab = build_vocab(train_examples, config, tokens=train_tokens)
    train_set = encode_examples(train_examples, vocab, config, tokens=train_tokens)
    eval_set = encode_examples(eval_examples, vocab, config)

    model = _model_for(vocab, config)
    init_started = time.perf_counter()
    if state is None and config.embedding_init == "ppmi":
        # Word vectors from the training rows' co-occurrences (gru_lib.embeddings); training fine-tunes them.
        vectors = ppmi_embeddings(train_set.ids, len(vocab), config.embed_dim, seed=config.seed)
        with torch.no_grad():
            model.embedding.weight.copy_(vectors)
            model.embedding.weight[vocab.pad_index].zero_()
    init_seconds = time.perf_counter() - init_started
    if state is not None:
        built = model.config()
        stored_model = state["model_config"]
        differences = [f"{k} {stored_model.get(k)!r} vs {v!r}" for k, v in built.items() if stored_model.get(k) != v]
        if differences:
            raise CheckpointError(
                f"{ckpt_file}: its model configuration and training configuration do not match "
                f"({', '.join(differences)})"
            )
        _load_weights(model, state, ckpt_file)  # type: ignore[arg-type]
    model = model.to(device)
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        # No weight decay on biases and the embedding table (rare words would be pulled to zero).
        (no_decay if param.dim() < 2 or name.startswith("embedding.") else decay).append(param)
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr,
    )
    sampler = BucketBatchSampler(
        train_set.lengths, config.batch_size, shuffle=True, seed=config.seed,
        num_replicas=ctx.world_size, rank=ctx.rank,
    )
    steps_per_epoch = len(sampler)
    total_steps = config.epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total_steps, config.warmup, config.schedule)
    )
    scaler = precision.grad_scaler()

    epoch, batch_in_epoch, step = 0, 0, 0
    history: list[dict[str, Any]] = []
    running = {"loss": 0.0, "correct": 0, "count": 0, "seconds": 0.0}
    if state is not None:
        training = state["training"]
        try:
            optimizer.load_state_dict(training["optimizer"])
            scheduler.load_state_dict(training["scheduler"])
            scaler.load_state_dict(training["scaler"])
            epoch, batch_in_epoch, step = int(training["epoch"]), int(training["batch_in_epoch"]), int(training["step"])
            history = list(training["history"])
            running = dict(training["running"])
            rng = training["rng"]
            restore_rng_state(rng[ctx.rank] if len(rng) == ctx.world_size else rng[0])
        except (KeyError, ValueError, TypeError, RuntimeError, IndexError) as error:
            raise CheckpointError(f"{ckpt_file}: bad training state ({error})") from None
        if int(training.get("steps_per_epoch", steps_per_epoch)) != steps_per_epoch:
            raise CheckpointError(
                f"{ckpt_file}: saved with {training.get('steps_per_epoch')} steps per epoch, this run has "
                f"{steps_per_epoch} (different data or number of processes)"
            )
        say(f"resuming from {ckpt_file}: epoch {epoch + 1}, step {step}")
    model = wrap_model(model, ctx)
    inner: NewsClassifier = unwrap_model(model)  # type: ignore[assignment]

    def kept() -> str:
        """What a NonFiniteLossError says about the checkpoint on disk."""
        if ckpt_file is not None and ckpt_file.exists():
            return f"the last good checkpoint {ckpt_file} was kept"
        return "no checkpoint had been written yet"

    def snapshot(complete: bool = False) -> None:
        """Write the checkpoint (rank 0 writes; every rank joins the RNG gather)."""
        if ckpt_file is None:
            return
        # A step with a finite loss can still leave inf/NaN weights (the next loss would catch it, after this
        # checkpoint replaced the good one). Replicas are identical, so every rank reaches the same verdict.
        bad = [name for name, p in inner.named_parameters() if not bool(torch.isfinite(p).all())]
        if bad:
            raise NonFiniteLossError(
                f"non-finite weights ({bad[0]}) after step {step}: training diverged and stopped; {kept()} "
                "(try a lower --lr or --max-grad-norm)")
        rng_rows = _gather_rows(ctx, torch.get_rng_state())
        if not main:
            return
        rng_states = []
        for row in rng_rows:
            rng_state = capture_rng_state()
            rng_state["torch"] = row.to(torch.uint8)
            rng_states.append(rng_state)
        save_checkpoint(
            {
                "model": inner.state_dict(),
                "model_config": inner.config(),
                "vocab": vocab.to_dict(),
                "train_config": asdict(config),
                "training": {
                    "epoch": epoch,
                    "batch_in_epoch": batch_in_epoch,
                    "step": step,
                    "steps_per_epoch": steps_per_epoch,
                    "world_size": ctx.world_size,
                    "complete": complete,
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict(),
                    "rng": rng_states,
                    "history": history,
                    "running": running,
                },
            },
            ckpt_file,
        )

    if ckpt_file is not None and main:
        ckpt_file.parent.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = history[-1]["eval"] if history else {}
    with _StopFlag(handle_sigterm) as stop:
        while epoch < config.epochs:
            sampler.set_epoch(epoch)
            batches = list(sampler)
            started = time.perf_counter()
            bar = tqdm(total=len(batches), initial=batch_in_epoch, desc=f"epoch {epoch + 1}/{config.epochs}",
                       disable=not (progress and main), leave=False, dynamic_ncols=True)
            model.train()
            with join_context(model, ctx):
                for index in range(batch_in_epoch, len(batches)):
                    ids, lengths, labels = collate_padded(
                        [train_set[i] for i in batches[index]], vocab.pad_index
                    )
                    ids, labels = ids.to(device), labels.to(device)
                    with precision.autocast():
                        logits = model(ids, lengths)
                    loss = F.cross_entropy(logits.float(), labels, label_smoothing=config.label_smoothing)
                    flags = torch.tensor([0.0 if torch.isfinite(loss) else 1.0, 1.0 if stop.requested else 0.0])
                    ctx.all_reduce_sum(flags)
                    if flags[0] > 0:
                        raise NonFiniteLossError(
                            f"non-finite loss ({loss.item()}) at epoch {epoch + 1}, step {step + 1}: training "
                            f"stopped before this step; {kept()} (try a lower --lr or --max-grad-norm)"
                        )
                    optimizer.zero_grad(set_to_none=True)
                    optimizer_step(loss, optimizer, scaler, parameters=list(model.parameters()),
                                   max_grad_norm=config.max_grad_norm or None)
                    scheduler.step()
                    step += 1
                    batch_in_epoch = index + 1
                    running["loss"] += loss.item() * len(labels)
                    running["correct"] += int((logits.argmax(dim=1) == labels).sum())
                    running["count"] += len(labels)
                    bar.update(1)
                    if on_step is not None:
                        on_step(step, inner)
                    last = batch_in_epoch == len(batches)
                    # Ranks agree on stopping through the all-reduced flag; a single process can stop at once.
                    stop_now = bool(flags[1] > 0) or (ctx.world_size == 1 and stop.requested)
                    if stop_now and not last:
                        running["seconds"] += time.perf_counter() - started
                        snapshot()
                        raise TrainingInterrupted(
                            f"stopped by SIGTERM at epoch {epoch + 1}, step {step}; checkpoint saved to "
                            f"{ckpt_file}: continue with --resume", ckpt_file)
                    if config.checkpoint_every and step % config.checkpoint_every == 0 and not last:
                        elapsed = time.perf_counter() - started
                        running["seconds"] += elapsed
                        started += elapsed
                        snapshot()
            bar.close()
            running["seconds"] += time.perf_counter() - started
            totals = torch.tensor([running["loss"], running["correct"], running["count"]], dtype=torch.float64)
            ctx.all_reduce_sum(totals)
            cm, eval_loss = evaluate_model(model, eval_set, batch_size=config.eval_batch_size, ctx=ctx,
                                           pad_index=vocab.pad_index)
            report = classification_report(cm, CLASSES)
            history.append({
                "epoch": epoch + 1,
                "step": step,
                "lr": optimizer.param_groups[0]["lr"],
                "train_loss": float(totals[0] / totals[2]),
                "train_accuracy": float(totals[1] / totals[2]),
                "eval_loss": eval_loss,
                "eval_accuracy": report["accuracy"],
                "eval_macro_f1": report["macro_f1"],
                "seconds": running["seconds"],
                "eval": report,
            })
            say(
                f"epoch {epoch + 1}/{config.epochs}  train loss {history[-1]['train_loss']:.4f} "
                f"acc {history[-1]['train_accuracy']:.4f}  eval loss {eval_loss:.4f} "
                f"acc {report['accuracy']:.4f} macro-F1 {report['macro_f1']:.4f}  ({running['seconds']:.1f}s)"
            )
            epoch += 1
            batch_in_epoch = 0
            running = {"loss": 0.0, "correct": 0, "count": 0, "seconds": 0.0}
            snapshot(complete=epoch == config.epochs)
            if stop.requested and epoch < config.epochs:
                raise TrainingInterrupted(
                    f"stopped by SIGTERM after epoch {epoch}; checkpoint saved to {ckpt_file}: continue with "
                    f"--resume", ckpt_file)
    return TrainResult(
        model=inner, vocab=vocab, config=config, history=history, report=report,
        train_seconds=sum(h["seconds"] for h in history), steps=step, extra={"init_seconds": init_seconds},
    )


def _load_weights(model: NewsClassifier, state: dict[str, Any], path: Path) -> None:
    weights = state["model"]
    expected = model.state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    mismatched = [
        f"{k} {tuple(weights[k].shape)} vs {tuple(expected[k].shape)}"
        for k in expected
        if k in weights and (not isinstance(weights[k], Tensor) or weights[k].shape != expected[k].shape)
    ]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:3])}" + (" ..." if len(missing) > 3 else ""))
        if unexpected:
            parts.append(f"unexpected {', '.join(unexpected[:3])}" + (" ..." if len(unexpected) > 3 else ""))
        if mismatched:
            parts.append(f"wrong shape {', '.join(mismatched[:3])}")
        raise CheckpointError(f"{path}: weights do not match the model configuration ({'; '.join(parts)})")
    model.load_state_dict(weights)


def load_classifier(
    model_dir: str | Path, *, device: torch.device | str = "cpu"
) -> tuple[NewsClassifier, Vocab, TrainConfig, dict[str, Any]]:
    """The trained classifier of a ``train --out`` directory: (model in eval mode, vocab, config, checkpoint)."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise CheckpointError(f"{model_dir}: not a directory (expected the --out directory of `train`)")
    path = checkpoint_path(model_dir)
    state = load_checkpoint(path, map_location=device)
    try:
        vocab = Vocab.from_dict(state["vocab"])
        config = TrainConfig.from_dict(state["train_config"])
        model = NewsClassifier(**state["model_config"])
    except (ValueError, TypeError, GruLibError) as error:
        raise CheckpointError(f"{path}: incompatible configuration ({error})") from None
    if model.embedding.num_embeddings != len(vocab):
        raise CheckpointError(
            f"{path}: the vocabulary has {len(vocab)} tokens but the embedding {model.embedding.num_embeddings} rows"
        )
    _load_weights(model, state, path)
    return model.to(device).eval(), vocab, config, state


# ----------------------------------------------------------------------------------------------- command line


def _data_dir(args: argparse.Namespace) -> tuple[Path, bool]:
    """The directory holding ``ag_news/`` and whether downloading into it is allowed (only the default)."""
    if args.data is None:
        return default_data_dir(), True
    path = Path(args.data).expanduser()
    if not path.is_dir():
        raise GruLibError(f"--data {args.data}: no such directory (give the directory that holds ag_news/)")
    return path, False


def _write_json(path: Path, value: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)


_CONFIG_FLAGS: dict[str, tuple[str, str]] = {
    # field: (flag, help)
    "epochs": ("--epochs", "passes over the training rows"),
    "batch_size": ("--batch-size", "texts per optimisation step (per process)"),
    "lr": ("--lr", "peak learning rate of AdamW"),
    "weight_decay": ("--weight-decay", "AdamW weight decay (not on biases and embeddings)"),
    "warmup": ("--warmup", "fraction of the steps with a linear learning-rate warmup"),
    "schedule": ("--schedule", "learning-rate decay after warmup: " + ", ".join(SCHEDULES)),
    "max_grad_norm": ("--max-grad-norm", "clip the gradient's global L2 norm to this (0: no clipping)"),
    "label_smoothing": ("--label-smoothing", "label smoothing of the cross-entropy"),
    "embed_dim": ("--embed-dim", "embedding size"),
    "embedding_init": ("--embedding-init", "ppmi: word vectors from the training rows' co-occurrences "
                       "(gru_lib.embeddings); random: N(0, 1)"),
    "hidden_size": ("--hidden-size", "GRU hidden size per direction"),
    "num_layers": ("--num-layers", "stacked GRU layers"),
    "dropout": ("--dropout", "dropout on embeddings, between layers and on the pooled features"),
    "word_dropout": ("--word-dropout", "probability of replacing a training token by <unk>"),
    "backend": ("--backend", "recurrent layer: " + ", ".join(BACKENDS)),
    "pooling": ("--pooling", "pooling over time: mean, max, last (GRU outputs), emb (embeddings), joined by '+'"),
    "max_len": ("--max-len", "keep the first N tokens of each text"),
    "min_freq": ("--min-freq", "vocabulary: minimum count of a token in the training rows"),
    "max_vocab": ("--max-vocab", "vocabulary: maximum size, specials included"),
    "seed": ("--seed", "random seed (weights, dropout, batch order)"),
    "precision": ("--precision", "fp32, bf16 (CPU or CUDA autocast) or fp16 (CUDA, with a gradient scaler)"),
    "checkpoint_every": ("--checkpoint-every", "also checkpoint every N steps (0: at the end of each epoch only)"),
    "eval_batch_size": ("--eval-batch-size", "texts per evaluation batch"),
}


def _add_train_parser(subparsers: argparse._SubParsersAction) -> None:
    defaults = TrainConfig()
    parser = subparsers.add_parser(
        "train", help="train the news classifier on AG News",
        description="Train the GRU news classifier; prints per-epoch metrics and writes checkpoint.pt, "
        "config.json, vocab.json and metrics.json into --out. The defaults are the book's recommended settings.",
    )
    parser.add_argument("--data", default=None, metavar="DIR",
                        help="directory holding ag_news/ (default: $GRU_LIB_DATA or the user cache, downloading)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory (created if missing)")
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    parser.add_argument("--train-rows", type=int, default=None, metavar="N",
                        help="train on the first N training rows only (default: all)")
    for name, (flag, text) in _CONFIG_FLAGS.items():
        value = getattr(defaults, name)
        kind = {int: int, float: float, str: str}.get(type(value), int)
        choices = {"backend": BACKENDS, "schedule": SCHEDULES, "precision": PRECISIONS,
                   "embedding_init": EMBEDDING_INITS}.get(name)
        parser.add_argument(flag, dest=name, type=kind, default=None, choices=choices,
                            help=f"{text} (default: {value})")
    parser.add_argument("--bidirectional", dest="bidirectional", action=argparse.BooleanOptionalAction,
                        default=None, help=f"read each text in both directions (default: {defaults.bidirectional})")
    parser.add_argument("--clean-text", dest="clean_text", action=argparse.BooleanOptionalAction, default=None,
                        help=f"repair AG News' HTML-entity debris before tokenizing (default: {defaults.clean_text})")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--threads", type=int, default=None, help="intra-op CPU threads (default: torch's)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    out = Path(args.out)
    given = {name: getattr(args, name) for name in [*_CONFIG_FLAGS, "bidirectional", "clean_text"]
             if getattr(args, name) is not None}
    ctx = init_distributed(device=args.device)
    try:
        if args.resume:
            path = checkpoint_path(out)
            if not path.exists():
                raise CheckpointError(f"{path}: no checkpoint to resume from")
            stored = load_checkpoint(path, require_training=True)["train_config"]
            try:
                config = TrainConfig.from_dict({**stored, **given})
            except TypeError as error:
                raise CheckpointError(f"{path}: incompatible configuration ({error})") from None
        else:
            if checkpoint_path(out).exists():
                raise GruLibError(f"--out {out} already holds a checkpoint: pass --resume to continue it, "
                                  "or choose another directory")
            config = TrainConfig.from_dict(given)
        data_dir, download = _data_dir(args)
        train_rows = load_ag_news("train", data_dir, download=download)
        test_rows = load_ag_news("test", data_dir, download=download)
        if args.train_rows is not None:
            if args.train_rows < 1:
                raise GruLibError(f"--train-rows {args.train_rows}: must be >= 1")
            train_rows = train_rows[: args.train_rows]
        if ctx.is_main:
            out.mkdir(parents=True, exist_ok=True)
            print(f"training on {len(train_rows):,} rows, evaluating on {len(test_rows):,} test rows "
                  f"({ctx.world_size} process{'es' if ctx.world_size > 1 else ''}, {ctx.device})", flush=True)
        log = lambda message: print(message, flush=True)  # noqa: E731
        started, cpu_started = time.perf_counter(), time.process_time()
        try:
            result = train(config, train_rows, test_rows, out_dir=out, resume=args.resume, ctx=ctx,
                           progress=False if args.no_progress else None, log=log, handle_sigterm=True,
                           threads=args.threads)
        except TrainingInterrupted as stopped:
            if ctx.is_main:
                print(f"interrupted: {stopped}", file=sys.stderr, flush=True)
            return 128 + signal.SIGTERM
        if ctx.is_main:
            _write_json(out / "config.json", {"train": asdict(config), "model": result.model.config()})
            result.vocab.save(out / "vocab.json")
            metrics = {
                "train_rows": len(train_rows),
                "test_rows": len(test_rows),
                "processes": ctx.world_size,
                "steps": result.steps,
                "train_seconds": result.train_seconds,
                "embedding_init_seconds": result.extra["init_seconds"],
                "wall_seconds": time.perf_counter() - started,
                # CPU time of this process (training and evaluation, all threads): robust to a busy machine.
                "cpu_seconds": time.process_time() - cpu_started,
                "history": [{k: v for k, v in h.items() if k != "eval"} for h in result.history],
                "test": result.report,
            }
            _write_json(out / "metrics.json", metrics)
            print(f"test accuracy {result.report['accuracy']:.4f}  macro-F1 {result.report['macro_f1']:.4f}; "
                  f"wrote {out / 'checkpoint.pt'} and metrics.json", flush=True)
        return 0
    finally:
        from gru_lib.distributed import cleanup

        cleanup(ctx)


def _add_evaluate_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate", help="evaluate a trained classifier on the AG News test split",
        description="Accuracy, macro-F1, per-class scores and the confusion matrix of a trained classifier.",
    )
    parser.add_argument("--model", required=True, metavar="DIR", help="the --out directory of `train`")
    parser.add_argument("--data", default=None, metavar="DIR",
                        help="directory holding ag_news/ (default: $GRU_LIB_DATA or the user cache, downloading)")
    parser.add_argument("--split", default="test", choices=("train", "test"), help="which split (default: test)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--batch-size", type=int, default=256, help="texts per batch (default: 256)")
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    parser.set_defaults(func=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> int:
    model, vocab, config, _ = load_classifier(args.model, device=args.device)
    data_dir, download = _data_dir(args)
    rows = load_ag_news(args.split, data_dir, download=download)
    dataset = encode_examples(rows, vocab, config)
    cm, loss = evaluate_model(model, dataset, batch_size=args.batch_size, pad_index=vocab.pad_index)
    report = classification_report(cm, CLASSES)
    if args.json:
        print(json.dumps({"split": args.split, "rows": len(rows), "loss": loss, **report}))
        return 0
    print(f"{args.split}: {len(rows):,} rows  accuracy {report['accuracy']:.4f}  macro-F1 {report['macro_f1']:.4f}"
          f"  loss {loss:.4f}")
    print(f"{'class':<10} {'precision':>9} {'recall':>7} {'f1':>7} {'support':>8}")
    for row in report["per_class"]:
        print(f"{row['class']:<10} {row['precision']:>9.4f} {row['recall']:>7.4f} {row['f1']:>7.4f} "
              f"{row['support']:>8}")
    print("confusion matrix (rows: true, columns: predicted; " + ", ".join(CLASSES) + ")")
    for line in report["confusion_matrix"]:
        print("  " + " ".join(f"{v:>6}" for v in line))
    return 0


def _add_predict_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "predict", help="predict the topic of texts with a trained classifier",
        description="Print the predicted topic and its probability for each text, one line each.",
    )
    parser.add_argument("--model", required=True, metavar="DIR", help="the --out directory of `train`")
    parser.add_argument("texts", nargs="+", metavar="TEXT", help="texts to classify")
    parser.add_argument("--json", action="store_true", help="print one JSON object per text")
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    parser.set_defaults(func=_run_predict)


def _run_predict(args: argparse.Namespace) -> int:
    model, vocab, config, _ = load_classifier(args.model, device=args.device)
    ids = numericalize(args.texts, vocab, max_len=config.max_len, clean=config.clean_text)
    probs = predict_logits(model, ids, pad_index=vocab.pad_index).softmax(dim=1)
    for text, row in zip(args.texts, probs):
        k = int(row.argmax())
        if args.json:
            print(json.dumps({"text": text, "topic": CLASSES[k], "probability": float(row[k]),
                              "probabilities": dict(zip(CLASSES, row.tolist()))}))
        else:
            print(f"{CLASSES[k]}\t{float(row[k]):.4f}\t{text}")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``train``, ``evaluate`` and ``predict``."""
    _add_train_parser(subparsers)
    _add_evaluate_parser(subparsers)
    _add_predict_parser(subparsers)
