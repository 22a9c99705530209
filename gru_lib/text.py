"""Chapter 4: the text pipeline that replaces torchtext: tokenizer, vocabulary, numericalisation, batching.

``tokenize`` reproduces torchtext's ``basic_english`` tokenizer: lowercase, then these substitutions in order,
then split on whitespace::

    '  -> " '  "     (an apostrophe becomes its own token: "street's" -> street ' s)
    "  -> ""         (double quotes vanish)
    .  -> " . "      ,  -> " , "      (  -> " ( "      )  -> " ) "      !  -> " ! "      ?  -> " ? "
    <br />  -> " "   ;  -> " "        :  -> " "        (semicolons and colons vanish)

Everything else (hyphens, ``$``, ``#``, ``&``, backslashes, digits) stays inside its token.

AG News carries debris from its source feeds: HTML entities without their ``&`` (``#39;`` for an apostrophe,
``quot;``, ``amp;``, ``#36;`` for ``$``, ``#151;`` for a dash), escaped markup (``&lt;TXN.N&gt;``,
``&lt;A HREF=...&gt;``) and backslashes where the feed had line breaks (``dwindling\\band``).
:func:`normalize` repairs these; ``tokenize(text)`` leaves them alone (it is the reference behaviour, so
vocabularies and results stay comparable with torchtext's AG News tutorials) and ``tokenize(text, clean=True)``
applies :func:`normalize` first. Chapter 4 measures what that does to the vocabulary.
"""

from __future__ import annotations

import html
import json
import math
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset, Sampler

from gru_lib.errors import DataError

__all__ = [
    "PAD",
    "UNK",
    "tokenize",
    "normalize",
    "Vocab",
    "numericalize",
    "EncodedDataset",
    "BucketBatchSampler",
    "collate_padded",
    "padding_waste",
]

PAD = "<pad>"
UNK = "<unk>"

# torchtext's basic_english rules, applied in this order (the order matters only for '<br "/>'-like input).
_BASIC_ENGLISH: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), replacement)
    for pattern, replacement in (
        (r"'", " '  "),
        (r'"', ""),
        (r"\.", " . "),
        (r"<br \/>", " "),
        (r",", " , "),
        (r"\(", " ( "),
        (r"\)", " ) "),
        (r"!", " ! "),
        (r"\?", " ? "),
        (r";", " "),
        (r":", " "),
        (r"\s+", " "),
    )
)

# An entity that lost its '&' (``#39;``, ``quot;``) or kept it (``&lt;``): give it back its '&' to unescape it.
_ENTITY = re.compile(r"&?(#\d{1,5};|(?:quot|amp|lt|gt|nbsp|hellip|rsquo|lsquo|rdquo|ldquo|mdash|ndash);)")
_TAG = re.compile(r"<[^<>]*>")
# Typographic characters that html.unescape produces (cp1252 codes #145-#151 too) -> ASCII the tokenizer splits.
_TYPOGRAPHY = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u2014": " - ",
                             "\u2013": " - ", "\u2026": "...", "\xa0": " "})


def normalize(text: str) -> str:
    """Repair AG News' feed debris: entities (``#39;`` -> ``'``, ``quot;`` -> ``"``, ``#36;`` -> ``$``,
    ``#151;`` -> `` - ``), then drop markup ``<...>`` (tags and ``<TICKER.N>`` symbols), then turn each
    backslash (a line break in the feed) into a space. Plain text passes through unchanged."""
    text = html.unescape(_ENTITY.sub(r"&\1", text)).translate(_TYPOGRAPHY)
    text = _TAG.sub(" ", text)
    return text.replace("\\", " ")


def tokenize(text: str, *, clean: bool = False) -> list[str]:
    """torchtext's ``basic_english`` tokens of ``text`` (module docstring); ``clean=True`` applies
    :func:`normalize` first. ``tokenize("You can now install TorchText using pip!")`` ->
    ``['you', 'can', 'now', 'install', 'torchtext', 'using', 'pip', '!']``."""
    if clean:
        text = normalize(text)
    text = text.lower()
    for pattern, replacement in _BASIC_ENGLISH:
        text = pattern.sub(replacement, text)
    return text.split()


class Vocab:
    """A token <-> index map. ``itos[i]`` is the token of index ``i``; specials come first, so with the
    default specials ``<pad>`` is 0 and ``<unk>`` is 1; unknown tokens map to ``unk_index``."""

    FORMAT = "gru_lib.vocab"
    VERSION = 1

    def __init__(self, itos: Sequence[str], specials: Sequence[str] = (PAD, UNK)) -> None:
        self.itos: list[str] = list(itos)
        self.specials: tuple[str, ...] = tuple(specials)
        if PAD not in self.specials or UNK not in self.specials:
            raise ValueError(f"Vocab: specials must include {PAD!r} and {UNK!r}, got {self.specials}")
        if list(self.specials) != self.itos[: len(self.specials)]:
            raise ValueError("Vocab: itos must start with the specials, in order")
        self.stoi: dict[str, int] = {}
        for index, token in enumerate(self.itos):
            if not isinstance(token, str) or token in self.stoi:
                raise ValueError(f"Vocab: entry {index} ({token!r}) is not a string or appears twice")
            self.stoi[token] = index
        self.pad_index = self.stoi[PAD]
        self.unk_index = self.stoi[UNK]

    @classmethod
    def build(
        cls,
        token_lists: Iterable[Iterable[str]],
        *,
        min_freq: int = 1,
        max_size: int | None = None,
        specials: Sequence[str] = (PAD, UNK),
    ) -> Vocab:
        """Specials, then every token seen at least ``min_freq`` times, most frequent first; ties broken
        alphabetically (so the result does not depend on the order of the data). ``max_size`` caps the
        total size, specials included: ``len(vocab) <= max_size``."""
        if min_freq < 1:
            raise ValueError(f"Vocab.build: min_freq must be >= 1, got {min_freq}")
        if max_size is not None and max_size < len(specials):
            raise ValueError(f"Vocab.build: max_size {max_size} leaves no room for the {len(specials)} specials")
        counts: Counter[str] = Counter()
        for tokens in token_lists:
            counts.update(tokens)
        for special in specials:
            counts.pop(special, None)
        ranked = sorted((item for item in counts.items() if item[1] >= min_freq), key=lambda kv: (-kv[1], kv[0]))
        if max_size is not None:
            ranked = ranked[: max_size - len(specials)]
        return cls([*specials, *(token for token, _ in ranked)], specials)

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, token: object) -> bool:
        return token in self.stoi

    def __getitem__(self, token: str) -> int:
        return self.stoi.get(token, self.unk_index)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocab) and self.itos == other.itos and self.specials == other.specials

    def __repr__(self) -> str:
        return f"Vocab(size={len(self)}, specials={self.specials})"

    def encode(self, tokens: Iterable[str]) -> list[int]:
        stoi, unk = self.stoi, self.unk_index
        return [stoi.get(token, unk) for token in tokens]

    def decode(self, ids: Iterable[int]) -> list[str]:
        return [self.itos[int(i)] for i in ids]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able description (for checkpoints); :meth:`from_dict` inverts it."""
        return {"format": self.FORMAT, "version": self.VERSION, "specials": list(self.specials), "itos": self.itos}

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> Vocab:
        if not isinstance(state, dict) or state.get("format") != cls.FORMAT:
            raise ValueError(f"not a {cls.FORMAT} dictionary")
        if state.get("version") != cls.VERSION:
            raise ValueError(f"unsupported {cls.FORMAT} version {state.get('version')!r}")
        itos, specials = state.get("itos"), state.get("specials")
        if not isinstance(itos, list) or not isinstance(specials, list):
            raise ValueError("'itos' and 'specials' must be lists")
        return cls(itos, specials)

    def save(self, path: str | Path) -> None:
        """Write :meth:`to_dict` as JSON, atomically (:func:`gru_lib.atomic.atomic_write`)."""
        from gru_lib.atomic import atomic_write

        atomic_write(Path(path), json.dumps(self.to_dict(), ensure_ascii=False) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Vocab:
        """Read a vocabulary that :meth:`save` wrote; a missing or malformed file is a :class:`DataError`."""
        path = Path(path)
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DataError(f"{path}: vocabulary file not found") from None
        except (OSError, UnicodeDecodeError) as error:
            raise DataError(f"{path}: cannot read vocabulary ({error})") from None
        except json.JSONDecodeError as error:
            raise DataError(f"{path}, line {error.lineno}: not valid JSON ({error.msg})") from None
        try:
            return cls.from_dict(state)
        except ValueError as error:
            raise DataError(f"{path}: not a vocabulary ({error})") from None


def numericalize(
    texts: Iterable[str | Sequence[str]], vocab: Vocab, *, max_len: int | None = None, clean: bool = False
) -> list[list[int]]:
    """Token ids of each text (a string is tokenized with :func:`tokenize`, ``clean`` passed on; a sequence
    is taken as tokens), cut to the first ``max_len`` tokens. Never empty: a text without tokens becomes
    ``[vocab.unk_index]``, so every sequence can be packed (``pack_padded_sequence`` rejects length 0)."""
    if max_len is not None and max_len < 1:
        raise ValueError(f"numericalize: max_len must be >= 1, got {max_len}")
    out: list[list[int]] = []
    for text in texts:
        tokens = tokenize(text, clean=clean) if isinstance(text, str) else text
        ids = vocab.encode(tokens[:max_len] if max_len is not None else tokens)
        out.append(ids or [vocab.unk_index])
    return out


class EncodedDataset(Dataset[tuple[list[int], int]]):
    """(token ids, label) pairs, with ``lengths`` for :class:`BucketBatchSampler`."""

    def __init__(self, ids: Sequence[Sequence[int]], labels: Sequence[int]) -> None:
        if len(ids) != len(labels):
            raise ValueError(f"EncodedDataset: {len(ids)} sequences but {len(labels)} labels")
        self.ids = [list(seq) for seq in ids]
        self.labels = [int(label) for label in labels]

    @classmethod
    def from_examples(
        cls, examples: Sequence[Any], vocab: Vocab, *, max_len: int | None = None, clean: bool = False
    ) -> EncodedDataset:
        """From objects with ``.text`` and ``.label`` (e.g. :class:`gru_lib.data.NewsExample`)."""
        return cls(numericalize((e.text for e in examples), vocab, max_len=max_len, clean=clean),
                   [e.label for e in examples])

    @property
    def lengths(self) -> list[int]:
        return [len(seq) for seq in self.ids]

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> tuple[list[int], int]:
        return self.ids[index], self.labels[index]


class BucketBatchSampler(Sampler[list[int]]):
    """Batches of dataset indices whose sequences have similar lengths, so little of each batch is padding.

    Each epoch (``shuffle=True``): shuffle all indices, cut them into pools of ``bucket_size`` (rounded up
    to a multiple of ``batch_size``; default ``100 * batch_size``), sort each pool by length, cut it into
    batches, shuffle the order of all batches. Only a pool's last batch can be short. The permutation depends
    only on ``(seed, epoch)``: call :meth:`set_epoch` before each epoch, as with ``DistributedSampler``.
    ``shuffle=False`` (evaluation): one pool, all indices sorted by length (stable), batches in that order.
    ``drop_last`` drops short batches.

    Data parallel: with ``num_replicas = R > 1`` the ``B`` batches of the epoch are dealt round-robin, rank
    ``r`` getting batches ``r, r + R, ...``. Every rank gets the same number of batches so no rank waits for
    the others at the end: ``ceil(B / R)``, the list wrapping around to its start to fill the last round
    (those few batches are seen twice); with ``drop_last``, ``floor(B / R)`` and the remainder is dropped.
    The shares of different ranks are disjoint apart from the wrapped-around batches.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        bucket_size: int | None = None,
        drop_last: bool = False,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"BucketBatchSampler: batch_size must be >= 1, got {batch_size}")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"BucketBatchSampler: need 0 <= rank < num_replicas, got rank={rank}, "
                             f"num_replicas={num_replicas}")
        bucket = 100 * batch_size if bucket_size is None else bucket_size
        if bucket < 1:
            raise ValueError(f"BucketBatchSampler: bucket_size must be >= 1, got {bucket_size}")
        self.lengths = torch.as_tensor(list(lengths), dtype=torch.long)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.bucket_size = math.ceil(bucket / batch_size) * batch_size
        self.drop_last = drop_last
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _total_batches(self) -> int:
        n = len(self.lengths)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def batches(self) -> list[list[int]]:
        """All batches of the current epoch, before they are dealt to ranks."""
        n = len(self.lengths)
        if self.shuffle:
            generator = torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) % 2**63)
            order = torch.randperm(n, generator=generator)
            pool_size = self.bucket_size
        else:
            generator = None
            order = torch.arange(n)
            pool_size = max(n, 1)
        batches: list[list[int]] = []
        for start in range(0, n, pool_size):
            pool = order[start : start + pool_size]
            pool = pool[torch.sort(self.lengths[pool], stable=True).indices]
            for b in range(0, len(pool), self.batch_size):
                batch = pool[b : b + self.batch_size].tolist()
                if len(batch) == self.batch_size or not self.drop_last:
                    batches.append(batch)
        if generator is not None:
            batches = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        batches = self.batches()
        if self.num_replicas == 1:
            yield from batches
            return
        per_rank = len(self)
        needed = per_rank * self.num_replicas
        if needed > len(batches) and batches:
            batches = (batches * math.ceil(needed / len(batches)))[:needed]
        yield from batches[self.rank : needed : self.num_replicas]

    def __len__(self) -> int:
        total = self._total_batches()
        if self.num_replicas == 1:
            return total
        return total // self.num_replicas if self.drop_last else math.ceil(total / self.num_replicas)


def collate_padded(batch: Sequence[tuple[Sequence[int], int]], pad_index: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """(ids, label) pairs -> ``ids`` (B, T_max) right-padded with ``pad_index``, ``lengths`` (B,), ``labels``
    (B,), all int64 on the CPU (move them with ``.to(device)``; ``pack_padded_sequence`` wants lengths there)."""
    if not batch:
        raise ValueError("collate_padded: empty batch")
    lengths = torch.tensor([len(ids) for ids, _ in batch], dtype=torch.long)
    if int(lengths.min()) < 1:
        raise ValueError("collate_padded: a sequence of length 0 (numericalize never makes one)")
    ids = torch.full((len(batch), int(lengths.max())), pad_index, dtype=torch.long)
    for row, (seq, _) in enumerate(batch):
        ids[row, : len(seq)] = torch.as_tensor(seq, dtype=torch.long)
    labels = torch.tensor([int(label) for _, label in batch], dtype=torch.long)
    return ids, lengths, labels


def padding_waste(lengths: Sequence[int], batches: Iterable[Sequence[int]]) -> float:
    """The fraction of the padded tensors' cells that are padding: ``1 - sum(len) / sum(B * T_max)``."""
    real = padded = 0
    for batch in batches:
        sizes = [lengths[i] for i in batch]
        real += sum(sizes)
        padded += len(sizes) * max(sizes, default=0)
    return 1.0 - real / padded if padded else 0.0
