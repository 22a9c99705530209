"""Metrics: hand-computed cases and scikit-learn agree with gru_lib.metrics."""

from __future__ import annotations

import pytest
import torch

from gru_lib.metrics import accuracy, classification_report, confusion_matrix, macro_f1, per_class_scores


def test_hand_computed_case() -> None:
    y_true = [0, 0, 0, 1, 1, 2]
    y_pred = [0, 0, 1, 1, 2, 2]
    cm = confusion_matrix(y_true, y_pred, 3)
    assert cm.tolist() == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert accuracy(cm) == pytest.approx(4 / 6)
    precision, recall, f1, support = per_class_scores(cm)
    assert precision.tolist() == pytest.approx([1.0, 0.5, 0.5])
    assert recall.tolist() == pytest.approx([2 / 3, 0.5, 1.0])
    assert f1.tolist() == pytest.approx([0.8, 0.5, 2 / 3])
    assert support.tolist() == [3, 2, 1]
    assert macro_f1(cm) == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)


def test_a_class_never_predicted_scores_zero_not_nan() -> None:
    cm = confusion_matrix([0, 1, 2, 3], [0, 0, 0, 0], 4)
    precision, recall, f1, _ = per_class_scores(cm)
    assert precision.tolist() == [0.25, 0.0, 0.0, 0.0]
    assert recall.tolist() == [1.0, 0.0, 0.0, 0.0]
    assert not torch.isnan(f1).any()
    report = classification_report(cm, ["a", "b", "c", "d"])
    assert report["per_class"][1] == {"class": "b", "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}


def test_against_scikit_learn() -> None:
    metrics = pytest.importorskip("sklearn.metrics")
    generator = torch.Generator().manual_seed(0)
    y_true = torch.randint(0, 4, (500,), generator=generator)
    y_pred = torch.where(torch.rand(500, generator=generator) < 0.7, y_true,
                         torch.randint(0, 4, (500,), generator=generator))
    cm = confusion_matrix(y_true, y_pred, 4)
    assert cm.tolist() == metrics.confusion_matrix(y_true.numpy(), y_pred.numpy(), labels=range(4)).tolist()
    assert accuracy(cm) == pytest.approx(metrics.accuracy_score(y_true, y_pred))
    assert macro_f1(cm) == pytest.approx(metrics.f1_score(y_true, y_pred, average="macro"))
    precision, recall, f1, support = metrics.precision_recall_fscore_support(y_true, y_pred, labels=range(4))
    ours = per_class_scores(cm)
    for mine, theirs in zip(ours, (precision, recall, f1, support)):
        assert mine.tolist() == pytest.approx(theirs.tolist())


def test_bad_labels_are_rejected() -> None:
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix([0, 4], [0, 1], 4)
    with pytest.raises(ValueError, match="predictions"):
        confusion_matrix([0, 1], [0], 4)
    with pytest.raises(TypeError, match="integer"):
        confusion_matrix(torch.tensor([0.5]), torch.tensor([0]), 4)
