"""The shared TF-IDF + linear baselines (gru_lib.baseline): the fixed one and the ones tuned on validation rows."""

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


def _rows(n: int, seed: int) -> list[NewsExample]:
    from synthetic_news import make_examples

    return make_examples(n, seed)


def test_tfidf_baseline_keeps_its_fixed_default_and_takes_the_others() -> None:
    train, test = _rows(80, 0), _rows(20, 1)
    default_pred, pairs = tfidf_baseline(train, test)
    explicit_pred, same = tfidf_baseline(train, test, ngrams="words+pairs", model="logreg", C=10.0)
    assert (default_pred == explicit_pred).all() and pairs == same
    svm_pred, words = tfidf_baseline(train, test, ngrams="words", model="linear_svm", C=1.0)
    assert words < pairs and len(svm_pred) == len(test)


def test_tune_linear_chooses_c_on_validation_smallest_among_ties() -> None:
    from gru_lib.baseline import tune_linear

    fit, validation = _rows(120, 0), _rows(40, 2)
    tuned = tune_linear(fit, validation, ngrams="words", model="logreg", grid=[10.0, 0.01, 1.0])
    assert sorted(tuned.validation) == [0.01, 1.0, 10.0]
    best = max(tuned.validation.values())
    assert tuned.C == min(c for c, a in tuned.validation.items() if a == best)
    y_val = [e.label for e in validation]
    assert float((tuned.predict(validation) == y_val).mean()) == tuned.validation[tuned.C]


def test_tune_linear_prefers_the_better_c() -> None:
    """Fit rows with four times as many World rows: with a tiny C the weights stay near zero and the model
    predicts World for nearly everything (a quarter of the balanced validation rows); the tuner avoids it."""
    from gru_lib.baseline import tune_linear

    fit = [e for i, e in enumerate(_rows(400, 0)) if e.label == 0 or i % 16 < 4]
    tuned = tune_linear(fit, _rows(40, 2), ngrams="words+pairs", model="logreg", grid=[1e-4, 1.0])
    assert tuned.validation[1.0] > tuned.validation[1e-4] + 0.2 and tuned.C == 1.0


@pytest.mark.parametrize("kwargs, word", [
    ({"ngrams": "trigrams", "model": "logreg"}, "trigrams"),
    ({"ngrams": "words", "model": "forest"}, "forest"),
    ({"ngrams": "words", "model": "logreg", "grid": []}, "grid"),
])
def test_tune_linear_names_bad_input(kwargs: dict, word: str) -> None:
    from gru_lib.baseline import tune_linear
    from gru_lib.errors import ConfigError

    with pytest.raises(ConfigError, match=word):
        tune_linear(_rows(40, 0), _rows(8, 1), **kwargs)
