"""Chapter 5: classification metrics, from the confusion matrix.

``C[i, j]`` counts the examples of true class ``i`` predicted as class ``j``. For class ``k``::

    precision_k = C[k, k] / sum_i C[i, k]        (of the texts called k, the share that are k)
    recall_k    = C[k, k] / sum_j C[k, j]        (of the texts that are k, the share called k)
    F1_k        = 2 precision_k recall_k / (precision_k + recall_k)
    accuracy    = trace(C) / sum(C)              macro-F1 = mean_k F1_k

A ratio whose denominator is zero is 0 (scikit-learn's ``zero_division=0``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["confusion_matrix", "accuracy", "per_class_scores", "macro_f1", "classification_report"]


def _as_labels(values: Tensor | Sequence[int], name: str) -> Tensor:
    tensor = torch.as_tensor(values).detach().cpu().reshape(-1)
    if tensor.is_floating_point():
        raise TypeError(f"{name}: expected integer class labels, got {tensor.dtype}")
    return tensor.long()


def confusion_matrix(y_true: Tensor | Sequence[int], y_pred: Tensor | Sequence[int], num_classes: int) -> Tensor:
    """``C`` (num_classes, num_classes) int64: rows are true classes, columns predicted classes."""
    true, pred = _as_labels(y_true, "y_true"), _as_labels(y_pred, "y_pred")
    if true.shape != pred.shape:
        raise ValueError(f"confusion_matrix: {true.numel()} true labels but {pred.numel()} predictions")
    for name, labels in (("y_true", true), ("y_pred", pred)):
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
            raise ValueError(f"confusion_matrix: {name} has a label outside 0..{num_classes - 1}")
    return torch.bincount(true * num_classes + pred, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes
    )


def _ratio(num: Tensor, den: Tensor) -> Tensor:
    return torch.where(den > 0, num / den.clamp(min=1e-300), torch.zeros_like(num))


def accuracy(cm: Tensor) -> float:
    """trace(C) / sum(C) (0 for an empty matrix)."""
    total = int(cm.sum())
    return float(cm.trace()) / total if total else 0.0


def per_class_scores(cm: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-class ``(precision, recall, f1, support)`` of a confusion matrix (float64, float64, float64, int64)."""
    cm = cm.double()
    tp = cm.diagonal()
    precision = _ratio(tp, cm.sum(dim=0))
    recall = _ratio(tp, cm.sum(dim=1))
    f1 = _ratio(2 * precision * recall, precision + recall)
    return precision, recall, f1, cm.sum(dim=1).long()


def macro_f1(cm: Tensor) -> float:
    """The unweighted mean of the per-class F1 scores."""
    return float(per_class_scores(cm)[2].mean())


def classification_report(cm: Tensor, class_names: Sequence[str] | None = None) -> dict[str, Any]:
    """A JSON-able summary: ``accuracy``, ``macro_f1``, ``confusion_matrix`` (nested lists) and ``per_class``
    (one dict per class: name, precision, recall, f1, support)."""
    precision, recall, f1, support = per_class_scores(cm)
    names = list(class_names) if class_names is not None else [str(k) for k in range(cm.shape[0])]
    return {
        "accuracy": accuracy(cm),
        "macro_f1": float(f1.mean()),
        "confusion_matrix": cm.long().tolist(),
        "per_class": [
            {"class": names[k], "precision": float(precision[k]), "recall": float(recall[k]),
             "f1": float(f1[k]), "support": int(support[k])}
            for k in range(cm.shape[0])
        ],
    }
