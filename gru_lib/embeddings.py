"""Chapter 5: word vectors from the training rows themselves (no download): PPMI + truncated SVD.

The book stays self-contained (no pretrained vectors to download), and a few thousand labelled texts are too
few to learn good ones from the labels alone: most words occur once or twice. The co-occurrence statistics of
the same texts carry what the labels lack (Levy, Goldberg and Dagan 2015 find this factorisation comparable
to word2vec on word-similarity tasks once their hyperparameters are matched). With
``#(w, c)`` the co-occurrences of words ``w`` and ``c`` within ``window`` tokens (weighted ``1/distance``)::

    PMI(w, c)  = log( #(w, c) * D / (#(w) * P_alpha(c) * D) ),   P_alpha(c) = #(c)^alpha / sum_c' #(c')^alpha
    PPMI       = max(PMI, 0)                                       (a sparse V x V matrix)
    PPMI      ~= U S V^T  (rank ``dim``, randomized SVD)           vectors = U sqrt(S), scaled to unit std

``alpha = 0.75`` (context-distribution smoothing) keeps rare contexts from dominating. The result initialises
the classifier's embedding table, which training then fine-tunes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

if TYPE_CHECKING:
    from scipy import sparse

__all__ = ["ppmi_matrix", "ppmi_embeddings"]


def ppmi_matrix(token_ids: Sequence[Sequence[int]], vocab_size: int, *, window: int = 5,
                alpha: float = 0.75) -> sparse.csr_matrix:
    """The symmetric PPMI matrix (vocab_size, vocab_size) of the texts ``token_ids`` (module docstring)."""
    from scipy import sparse  # SciPy and scikit-learn load here, not with gru_lib

    if window < 1:
        raise ValueError(f"ppmi_matrix: window must be >= 1, got {window}")
    rows, cols, weights = [], [], []
    for ids in token_ids:
        array = np.asarray(ids, dtype=np.int64)
        for distance in range(1, min(window, len(array) - 1) + 1):
            rows.append(array[:-distance])
            cols.append(array[distance:])
            weights.append(np.full(len(array) - distance, 1.0 / distance))
    if not rows:
        return sparse.csr_matrix((vocab_size, vocab_size))
    r, c, v = np.concatenate(rows), np.concatenate(cols), np.concatenate(weights)
    counts = sparse.coo_matrix((np.concatenate([v, v]), (np.concatenate([r, c]), np.concatenate([c, r]))),
                               shape=(vocab_size, vocab_size)).tocsr()
    counts.sum_duplicates()
    total = counts.sum()
    word = np.asarray(counts.sum(axis=1)).ravel() / total
    context = np.asarray(counts.sum(axis=0)).ravel() ** alpha
    context /= context.sum()
    coo = counts.tocoo()
    pmi = np.log(coo.data / total) - np.log(word[coo.row]) - np.log(context[coo.col])
    keep = pmi > 0
    return sparse.csr_matrix((pmi[keep], (coo.row[keep], coo.col[keep])), shape=counts.shape)


def ppmi_embeddings(token_ids: Sequence[Sequence[int]], vocab_size: int, dim: int, *, window: int = 5,
                    alpha: float = 0.75, seed: int = 0) -> Tensor:
    """Word vectors (vocab_size, dim) float32 from the PPMI matrix's rank-``dim`` SVD, ``U sqrt(S)``, scaled
    to unit standard deviation like ``nn.Embedding``'s N(0, 1) initialisation. Deterministic given ``seed``.
    Words that never co-occur (and the specials, if absent from the texts) get zero vectors; so do the columns
    beyond the matrix's rank when ``dim >= vocab_size`` (tiny vocabularies)."""
    if dim < 1 or vocab_size < 2:
        raise ValueError(f"ppmi_embeddings: need dim >= 1 and vocab_size >= 2, got {dim} and {vocab_size}")
    from sklearn.utils.extmath import randomized_svd

    matrix = ppmi_matrix(token_ids, vocab_size, window=window, alpha=alpha)
    rank = min(dim, vocab_size - 1)
    u, s, _ = randomized_svd(matrix, rank, random_state=seed)
    vectors = np.zeros((vocab_size, dim))
    vectors[:, :rank] = u * np.sqrt(s)
    std = vectors[:, :rank].std()
    return torch.from_numpy(vectors / std if std > 0 else vectors).float()
