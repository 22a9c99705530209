"""The classical baselines of chapter 5: TF-IDF features (sublinear tf) of words, or of words and word pairs,
and a linear classifier, logistic regression or a linear SVM (one-vs-rest hinge loss).

Each text becomes the unit-length vector ``x_{d,w} = (1 + log tf(w, d)) * (1 + log((1 + N) / (1 + df(w))))``
over the terms of the rows it was fitted on; the classifier scores ``W x + b``. The penalty ``C`` (larger:
weaker L2 regularisation) is chosen by :func:`tune_linear` on validation rows, never on test rows: for each
``C`` of the grid a model is fitted on the fit rows and scored on the validation rows; the best ``C`` (the
smallest among ties) wins, and its model, fitted on the fit rows only, is the one that predicts the test rows.

Chapter 5, ``gru_lib.ablation`` and ``gru_lib.bench_classifier`` all call this module, so they score the same
baselines. scikit-learn is imported inside the functions so that ``gru_lib`` does not need it otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gru_lib.data import NewsExample
from gru_lib.errors import ConfigError

__all__ = ["NGRAMS", "MODELS", "C_GRID", "LinearBaseline", "fit_linear", "tune_linear", "tfidf_baseline"]

NGRAMS: dict[str, tuple[int, int]] = {"words": (1, 1), "words+pairs": (1, 2)}
MODELS: tuple[str, ...] = ("logreg", "linear_svm")
C_GRID: tuple[float, ...] = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)


@dataclass
class LinearBaseline:
    """A fitted TF-IDF + linear model: ``predict(rows)`` gives labels; ``features`` is the vocabulary size;
    ``C`` the chosen penalty and ``validation`` the validation accuracy of every ``C`` tried (empty when none)."""

    ngrams: str
    model: str
    C: float
    vectorizer: Any
    classifier: Any
    features: int
    validation: dict[float, float] = field(default_factory=dict)

    def predict(self, rows: Sequence[NewsExample]) -> np.ndarray:
        """The predicted label of each row."""
        return self.classifier.predict(self.vectorizer.transform([e.text for e in rows]))


def _check(ngrams: str, model: str) -> None:
    if ngrams not in NGRAMS:
        raise ConfigError(f"ngrams {ngrams!r}: expected one of {', '.join(NGRAMS)}")
    if model not in MODELS:
        raise ConfigError(f"model {model!r}: expected one of {', '.join(MODELS)}")


def _classifier(model: str, C: float) -> Any:
    from sklearn.linear_model import LogisticRegression
    from sklearn.svm import LinearSVC

    if model == "logreg":
        return LogisticRegression(C=C, max_iter=2000)
    return LinearSVC(C=C, max_iter=10000)


def fit_linear(fit: Sequence[NewsExample], *, ngrams: str = "words+pairs", model: str = "logreg",
               C: float = 10.0) -> LinearBaseline:
    """TF-IDF (``NGRAMS[ngrams]``) + ``model`` with penalty ``C``, fitted on the rows ``fit``."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    _check(ngrams, model)
    vectorizer = TfidfVectorizer(sublinear_tf=True, ngram_range=NGRAMS[ngrams])
    features = vectorizer.fit_transform([e.text for e in fit])
    classifier = _classifier(model, C).fit(features, [e.label for e in fit])
    return LinearBaseline(ngrams, model, C, vectorizer, classifier, features.shape[1])


def tune_linear(fit: Sequence[NewsExample], validation: Sequence[NewsExample], *, ngrams: str, model: str,
                grid: Sequence[float] = C_GRID) -> LinearBaseline:
    """Choose ``C`` from ``grid`` by accuracy on ``validation`` (models fitted on ``fit`` only; ties go to the
    smallest ``C``); return the chosen model, fitted on ``fit`` only, with every ``C``'s validation accuracy."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    _check(ngrams, model)
    if not fit or not validation or not grid:
        raise ConfigError("tune_linear needs fit rows, validation rows and a non-empty grid of C")
    vectorizer = TfidfVectorizer(sublinear_tf=True, ngram_range=NGRAMS[ngrams])
    x_fit = vectorizer.fit_transform([e.text for e in fit])
    x_val = vectorizer.transform([e.text for e in validation])
    y_fit, y_val = [e.label for e in fit], np.array([e.label for e in validation])
    scores: dict[float, float] = {}
    best: tuple[float, float, Any] | None = None
    for C in sorted(grid):
        classifier = _classifier(model, C).fit(x_fit, y_fit)
        scores[C] = float((classifier.predict(x_val) == y_val).mean())
        if best is None or scores[C] > best[0]:
            best = (scores[C], C, classifier)
    assert best is not None
    return LinearBaseline(ngrams, model, best[1], vectorizer, best[2], x_fit.shape[1], scores)


def tfidf_baseline(train: Sequence[NewsExample], test: Sequence[NewsExample], *, ngrams: str = "words+pairs",
                   model: str = "logreg", C: float = 10.0) -> tuple[np.ndarray, int]:
    """Fit TF-IDF + ``model`` (penalty ``C``) on ``train``; return the predicted labels of ``test`` and the
    number of TF-IDF features. The defaults are the fixed baseline ``gru_lib.bench_classifier`` scores."""
    baseline = fit_linear(train, ngrams=ngrams, model=model, C=C)
    return baseline.predict(test), baseline.features
