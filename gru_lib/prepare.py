"""Chapter 5: from rows to what training needs: tokens, the vocabulary, token ids and an initialised model.

The vocabulary comes from the training rows only (``min_freq``, ``max_vocab``); every text is cut at
``max_len`` tokens; the embedding table starts from word vectors of the training rows' co-occurrences
(``embedding_init="ppmi"``, :mod:`gru_lib.embeddings`) or from N(0, 1) (``"random"``).
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence

import torch

from gru_lib.config import TrainConfig
from gru_lib.data import CLASSES, NewsExample
from gru_lib.errors import ConfigError
from gru_lib.models import NewsClassifier
from gru_lib.text import EncodedDataset, Vocab, numericalize, tokenize

__all__ = ["split_validation", "tokenize_examples", "build_vocab", "encode_examples", "build_classifier"]


def split_validation(
    examples: Sequence[NewsExample], fraction: float, seed: int
) -> tuple[list[NewsExample], list[NewsExample]]:
    """(training rows, validation rows): of each class's ``n`` rows, ``round(fraction * n)`` drawn with
    ``random.Random(seed)`` are held out, so both parts keep the class proportions. Both keep the rows' order;
    ``fraction == 0`` holds out nothing. A split that leaves either part empty is refused."""
    if fraction <= 0:
        return list(examples), []
    by_class: dict[int, list[int]] = {}
    for index, example in enumerate(examples):
        by_class.setdefault(example.label, []).append(index)
    rng = random.Random(seed)
    held: set[int] = set()
    for label in sorted(by_class):
        held.update(rng.sample(by_class[label], round(fraction * len(by_class[label]))))
    kept = [e for i, e in enumerate(examples) if i not in held]
    validation = [e for i, e in enumerate(examples) if i in held]
    if not kept or not validation:
        raise ConfigError(f"val_fraction {fraction}: {len(examples)} training rows split into {len(kept)} for "
                          f"training and {len(validation)} for validation; both must be non-empty")
    return kept, validation


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


def build_classifier(
    vocab: Vocab, config: TrainConfig, train_ids: Sequence[Sequence[int]] | None = None
) -> tuple[NewsClassifier, float]:
    """The classifier of ``config.model`` for ``vocab`` and the seconds its embedding initialisation took.
    With ``train_ids`` and ``embedding_init="ppmi"`` the embedding table starts from the PPMI word vectors of
    those texts (the padding row stays zero); otherwise it keeps ``nn.Embedding``'s N(0, 1) rows."""
    model = NewsClassifier(len(vocab), config.model, num_classes=len(CLASSES), padding_idx=vocab.pad_index,
                           unk_idx=vocab.unk_index)
    started = time.perf_counter()
    if train_ids is not None and config.embedding_init == "ppmi":
        from gru_lib.embeddings import ppmi_embeddings  # SciPy and scikit-learn: loaded only here

        vectors = ppmi_embeddings(train_ids, len(vocab), config.model.embed_dim, seed=config.seed)
        with torch.no_grad():
            model.embedding.weight.copy_(vectors)
            model.embedding.weight[vocab.pad_index].zero_()
    return model, time.perf_counter() - started
