"""Chapter 5: using a classifier: logits in the caller's order, exact (sharded) evaluation, and loading the
classifier a ``train --out`` directory holds.

Evaluation is counted, not averaged: each rank scores the rows ``rank::world_size``, and the confusion
matrix and the summed cross-entropy are all-reduced, so the result equals a single process's exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from gru_lib.checkpoint import checkpoint_path, load_checkpoint
from gru_lib.config import TrainConfig
from gru_lib.data import CLASSES
from gru_lib.distributed import DistContext, unwrap_model
from gru_lib.errors import CheckpointError, GruLibError
from gru_lib.metrics import confusion_matrix
from gru_lib.models import NewsClassifier
from gru_lib.text import EncodedDataset, Vocab, collate_padded

__all__ = ["predict_logits", "evaluate_model", "check_weights", "load_weights", "classifier_from_record",
           "load_classifier"]


@torch.no_grad()
def predict_logits(
    model: nn.Module, ids: Sequence[Sequence[int]], *, batch_size: int = 256, device: torch.device | None = None,
    pad_index: int = 0,
) -> Tensor:
    """Logits (N, C) of every sequence in ``ids``, in their order (batched by length, in eval mode; the
    model's mode is restored afterwards)."""
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
    labels = torch.tensor([dataset.labels[i] for i in share], dtype=torch.long)
    logits = predict_logits(model, [dataset.ids[i] for i in share], batch_size=batch_size, pad_index=pad_index)
    totals = torch.zeros(num_classes * num_classes + 1, dtype=torch.float64)
    if share:
        totals[:-1] = confusion_matrix(labels, logits.argmax(dim=1), num_classes).reshape(-1).double()
        totals[-1] = F.cross_entropy(logits, labels, reduction="sum").double()
    ctx.all_reduce_sum(totals)
    cm = totals[:-1].round().long().reshape(num_classes, num_classes)
    return cm, float(totals[-1]) / max(1, int(cm.sum()))


def check_weights(model: nn.Module, weights: dict[str, Any], path: Path) -> None:
    """Refuse (naming ``path``) weights that ``model`` (which may live on the ``meta`` device: nothing is
    allocated) cannot take: missing, unexpected or misshapen ones, non-floating tensors where the model has
    floating ones, and NaN or infinite values."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    mismatched = [
        f"{k} {tuple(getattr(weights[k], 'shape', ()))} vs {tuple(expected[k].shape)}"
        for k in expected
        if k in weights and (not isinstance(weights[k], Tensor) or weights[k].shape != expected[k].shape)
    ]
    parts = [f"{what} {', '.join(names[:3])}" + (" ..." if len(names) > 3 else "")
             for what, names in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mismatched))
             if names]
    if parts:
        raise CheckpointError(f"{path}: weights do not match the model configuration ({'; '.join(parts)})")
    for name, value in weights.items():
        if expected[name].is_floating_point() and not value.is_floating_point():
            raise CheckpointError(f"{path}: weight {name} has dtype {value.dtype}, expected a floating dtype")
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise CheckpointError(f"{path}: weight {name} holds NaN or infinite values")


def load_weights(model: nn.Module, weights: dict[str, Any], path: Path) -> None:
    """``model.load_state_dict(weights)`` after :func:`check_weights` (errors name ``path``)."""
    check_weights(model, weights, path)
    model.load_state_dict(weights)


def classifier_from_record(record: dict[str, Any], weights: dict[str, Tensor], path: Path
                           ) -> tuple[NewsClassifier, Vocab, TrainConfig]:
    """The classifier a saved record describes (its ``vocab``, ``train_config`` and ``model_config`` entries,
    as checkpoints and shipped models store them) with ``weights`` loaded; errors name ``path``.

    The stored sizes are checked against the weights, which the file bounds, on the ``meta`` device before
    the model is built, so absurd sizes are refused without allocating anything; the head must have one
    output per class of :data:`gru_lib.data.CLASSES`."""
    try:
        vocab = Vocab.from_dict(record["vocab"])
        config = TrainConfig.from_dict(record["train_config"])
        with torch.device("meta"):
            skeleton = NewsClassifier(**record["model_config"])
    except (ValueError, TypeError, RuntimeError, OverflowError, AssertionError, IndexError, GruLibError) as error:
        # AssertionError: nn.Embedding's own check of padding_idx (outside the embedding's rows)
        raise CheckpointError(f"{path}: incompatible configuration ({error})") from None
    if skeleton.embedding.num_embeddings != len(vocab):
        raise CheckpointError(f"{path}: the vocabulary has {len(vocab)} tokens but the embedding "
                              f"{skeleton.embedding.num_embeddings} rows")
    if skeleton.head.out_features != len(CLASSES):
        raise CheckpointError(f"{path}: the classifier has {skeleton.head.out_features} classes, "
                              f"but AG News has {len(CLASSES)}")
    check_weights(skeleton, weights, path)
    model = NewsClassifier(**record["model_config"])
    model.load_state_dict(weights)
    return model, vocab, config


def load_classifier(
    model_dir: str | Path, *, device: torch.device | str = "cpu"
) -> tuple[NewsClassifier, Vocab, TrainConfig, dict[str, Any]]:
    """The trained classifier of a ``train --out`` directory, or of one of its checkpoint files: (model in
    eval mode, vocab, config, checkpoint). The checkpoint is read onto the CPU and checked there, so a device
    mistake is never blamed on the file."""
    model_dir = Path(model_dir)
    if not model_dir.exists():
        raise CheckpointError(f"{model_dir}: no such file or directory (expected the --out directory of `train`)")
    if not model_dir.is_dir() and not model_dir.is_file():
        raise CheckpointError(f"{model_dir}: neither a directory nor a file (expected the --out directory of "
                              "`train`)")
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise GruLibError(f"device {str(device)!r}: CUDA is not available on this machine")
    path = checkpoint_path(model_dir) if model_dir.is_dir() else model_dir
    state = load_checkpoint(path, map_location="cpu")
    model, vocab, config = classifier_from_record(state, state["model"], path)
    return model.to(device).eval(), vocab, config, state
