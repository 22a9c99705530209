"""The shared TF-IDF + logistic regression baseline (gru_lib.baseline)."""

from __future__ import annotations

import pytest

pytest.importorskip("sklearn")

from gru_lib.baseline import tfidf_baseline  # noqa: E402
from gru_lib.data import NewsExample  # noqa: E402


def test_tfidf_baseline_separates_topic_words() -> None:
    words = ["football match goal", "stocks market shares", "election vote minister", "software chip computer"]
    train = [NewsExample(label, f"{words[label]} {i}", words[label]) for label in range(4) for i in range(5)]
    test = [NewsExample(label, words[label], "") for label in range(4)]
    pred, n_features = tfidf_baseline(train, test)
    assert pred.tolist() == [0, 1, 2, 3]
    assert n_features > 12  # unigrams and word pairs
