"""PPMI + SVD word vectors from the training rows (gru_lib.embeddings)."""

from __future__ import annotations

import math

import pytest
import torch

from gru_lib.embeddings import ppmi_embeddings, ppmi_matrix


def test_ppmi_matrix_by_hand() -> None:
    # Two texts, window 1: pairs (2,3), (3,4) and (2,3) again; counts are symmetric.
    matrix = ppmi_matrix([[2, 3, 4], [2, 3]], 5, window=1, alpha=1.0).toarray()
    counts = torch.zeros(5, 5, dtype=torch.float64)
    for a, b, n in ((2, 3, 2.0), (3, 4, 1.0)):
        counts[a, b] = counts[b, a] = n
    total, row = counts.sum(), counts.sum(dim=1)
    for a, b in ((2, 3), (3, 2), (3, 4), (4, 3)):
        expected = max(0.0, math.log(counts[a, b] * total / (row[a] * row[b])))
        assert matrix[a, b] == pytest.approx(expected)
    assert (matrix >= 0).all() and abs(matrix - matrix.T).max() < 1e-12
    assert matrix[0].sum() == 0 and matrix[2, 4] == 0


def test_words_sharing_contexts_get_similar_vectors() -> None:
    generator = torch.Generator().manual_seed(0)
    # Words 2..4 appear with contexts 10..14, words 5..7 with contexts 15..19.
    texts = []
    for _ in range(300):
        group = int(torch.randint(0, 2, (1,), generator=generator))
        words = torch.randint(2, 5, (2,), generator=generator) + 3 * group
        contexts = torch.randint(10, 15, (4,), generator=generator) + 5 * group
        texts.append(torch.cat([words, contexts])[torch.randperm(6, generator=generator)].tolist())
    vectors = ppmi_embeddings(texts, 20, 4, window=5)
    assert vectors.shape == (20, 4) and vectors.dtype == torch.float32
    assert float(vectors[2:20].std()) > 0.5
    cos = torch.nn.functional.cosine_similarity
    same = cos(vectors[2], vectors[3], dim=0)
    other = cos(vectors[2], vectors[6], dim=0)
    assert same > 0.8 and same > other + 0.5
    torch.testing.assert_close(ppmi_embeddings(texts, 20, 4, window=5), vectors)  # deterministic


def test_tiny_vocabularies_and_bad_arguments() -> None:
    vectors = ppmi_embeddings([[2, 3, 4, 2, 3]], 5, 8)
    assert vectors.shape == (5, 8) and torch.all(vectors[:, 4:] == 0)
    with pytest.raises(ValueError, match="window"):
        ppmi_matrix([[1, 2]], 3, window=0)
    with pytest.raises(ValueError, match="dim"):
        ppmi_embeddings([[1, 2]], 3, 0)
