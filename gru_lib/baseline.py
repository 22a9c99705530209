"""The classical baseline of chapter 5: TF-IDF (words and word pairs, sublinear tf) + logistic regression (C=10),
trained on one set of rows and used to predict another. Chapter 5 and ``gru_lib.bench_classifier``
both call it, so the notebook and the benchmark score the same baseline."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from gru_lib.data import NewsExample


def tfidf_baseline(train: Sequence[NewsExample], test: Sequence[NewsExample]) -> tuple[np.ndarray, int]:
    """Fit TF-IDF + logistic regression on ``train``; return the predicted labels of ``test`` and the number of
    TF-IDF features. scikit-learn is imported here so that ``gru_lib`` does not need it otherwise."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    vectorizer = TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 2))
    features = vectorizer.fit_transform([e.text for e in train])
    model = LogisticRegression(C=10, max_iter=2000).fit(features, [e.label for e in train])
    return model.predict(vectorizer.transform([e.text for e in test])), features.shape[1]
