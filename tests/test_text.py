"""gru_lib.text: the basic_english tokenizer, normalize, Vocab, numericalize, bucketing and collate."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from gru_lib.errors import DataError
from gru_lib.text import (
    BucketBatchSampler,
    EncodedDataset,
    Vocab,
    collate_padded,
    normalize,
    numericalize,
    padding_waste,
    tokenize,
)

# --- tokenizer: cases derived from torchtext basic_english's rules (see gru_lib.text's docstring) ----------


@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        # torchtext's own docstring example
        (
            "You can now install TorchText using pip!",
            ["you", "can", "now", "install", "torchtext", "using", "pip", "!"],
        ),
        ("Wall St. Bears", ["wall", "st", ".", "bears"]),
        ("Wall Street's", ["wall", "street", "'", "s"]),
        ('He said "no"', ["he", "said", "no"]),
        ("a:b;c", ["a", "b", "c"]),
        ("line<br />break LINE<BR />X", ["line", "break", "line", "x"]),
        ("(Reuters) - $55.8bn, up 3%?", ["(", "reuters", ")", "-", "$55", ".", "8bn", ",", "up", "3%", "?"]),
        ("short-sellers & co", ["short-sellers", "&", "co"]),
        ("dwindling\\band", ["dwindling\\band"]),
        ("It #39;s", ["it", "#39", "s"]),
        ("  a \t b\n", ["a", "b"]),
        ("", []),
    ],
)
def test_tokenize_matches_basic_english(text: str, tokens: list[str]) -> None:
    assert tokenize(text) == tokens


@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        ("dwindling\\band", ["dwindling", "band"]),
        ("It #39;s", ["it", "'", "s"]),
        ("quot;Hi quot; AT amp;T", ["hi", "at", "&t"]),
        ("up #36;5 #151; or more", ["up", "$5", "-", "or", "more"]),
        ("Inc. &lt;TXN.N&gt; said", ["inc", ".", "said"]),
        ("see &lt;A HREF=\"http://x.com/q?t=1\"&gt;quote&lt;/A&gt;", ["see", "quote"]),
        ("don #146;t", ["don", "'", "t"]),
    ],
)
def test_clean_repairs_feed_debris(text: str, tokens: list[str]) -> None:
    assert tokenize(text, clean=True) == tokens


def test_normalize_leaves_plain_text_alone() -> None:
    plain = "Wall St. Bears Claw Back Into the Black (Reuters) - it's 5% up; 3 & 4 are #1."
    assert normalize(plain) == plain


# --- Vocab ---------------------------------------------------------------------------------------------------

CORPUS = [["b", "a", "c", "a"], ["c", "a", "d"], ["e", "b"]]  # a:3, b:2, c:2, d:1, e:1


def test_vocab_order_specials_and_lookup() -> None:
    vocab = Vocab.build(CORPUS)
    assert vocab.itos == ["<pad>", "<unk>", "a", "b", "c", "d", "e"]  # by count, ties alphabetical
    assert (vocab.pad_index, vocab.unk_index, len(vocab)) == (0, 1, 7)
    assert vocab["c"] == 4 and vocab["zebra"] == 1 and "zebra" not in vocab
    assert vocab.encode(["a", "zebra", "e"]) == [2, 1, 6]
    assert vocab.decode([2, 1, 6, 0]) == ["a", "<unk>", "e", "<pad>"]
    assert Vocab.build(reversed(CORPUS)) == vocab  # the order of the data does not matter


def test_vocab_min_freq_and_max_size() -> None:
    assert Vocab.build(CORPUS, min_freq=2).itos == ["<pad>", "<unk>", "a", "b", "c"]
    assert Vocab.build(CORPUS, min_freq=3).itos == ["<pad>", "<unk>", "a"]
    assert Vocab.build(CORPUS, max_size=4).itos == ["<pad>", "<unk>", "a", "b"]  # specials count
    assert Vocab.build(CORPUS, max_size=2).itos == ["<pad>", "<unk>"]
    with pytest.raises(ValueError):
        Vocab.build(CORPUS, max_size=1)
    with pytest.raises(ValueError):
        Vocab.build(CORPUS, min_freq=0)


def test_vocab_custom_specials_and_special_tokens_in_data() -> None:
    vocab = Vocab.build([["<unk>", "x", "<bos>"]], specials=("<pad>", "<unk>", "<bos>"))
    assert vocab.itos == ["<pad>", "<unk>", "<bos>", "x"]
    with pytest.raises(ValueError, match="must include"):
        Vocab.build(CORPUS, specials=("<pad>",))


def test_vocab_json_round_trip(tmp_path: Path) -> None:
    vocab = Vocab.build([*CORPUS, ["naïve", "日本"]])
    vocab.save(tmp_path / "vocab.json")
    again = Vocab.load(tmp_path / "vocab.json")
    assert again == vocab and again.itos == vocab.itos and again["日本"] == vocab["日本"]
    assert Vocab.from_dict(json.loads(json.dumps(vocab.to_dict()))) == vocab


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", r"vocab\.json, line 1: not valid JSON"),
        ('{"format": "other"}', r"vocab\.json: not a vocabulary \(not a gru_lib\.vocab dictionary\)"),
        (
            '{"format": "gru_lib.vocab", "version": 1, "specials": ["<pad>", "<unk>"],'
            ' "itos": ["<pad>", "<unk>", "a", "a"]}',
            r"vocab\.json: not a vocabulary \(.*appears twice\)",
        ),
        ('{"format": "gru_lib.vocab", "version": 1, "specials": ["<pad>", "<unk>"], "itos": ["a"]}',
         r"vocab\.json: not a vocabulary \(.*start with the specials"),
    ],
)
def test_vocab_bad_file(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "vocab.json"
    path.write_text(content)
    with pytest.raises(DataError, match=message):
        Vocab.load(path)


def test_vocab_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nope\.json: vocabulary file not found"):
        Vocab.load(tmp_path / "nope.json")


# --- numericalize, dataset, collate --------------------------------------------------------------------------


def test_numericalize() -> None:
    vocab = Vocab.build([tokenize("the cat sat on the mat .")])
    assert numericalize(["The cat sat.", "a dog"], vocab) == [
        vocab.encode(["the", "cat", "sat", "."]),
        [vocab.unk_index, vocab.unk_index],
    ]
    assert numericalize(["the cat sat on the mat"], vocab, max_len=2) == [vocab.encode(["the", "cat"])]
    assert numericalize(["", ";:", []], vocab) == [[1], [1], [1]]  # never empty
    assert numericalize([["cat", "mat"]], vocab) == [vocab.encode(["cat", "mat"])]  # tokens taken as they are
    with pytest.raises(ValueError):
        numericalize(["x"], vocab, max_len=0)


def test_collate_padded() -> None:
    ids, lengths, labels = collate_padded([([5, 6, 7], 2), ([8], 0), ([9, 10], 3)])
    assert ids.dtype == lengths.dtype == labels.dtype == torch.long
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0], [9, 10, 0]]
    assert lengths.tolist() == [3, 1, 2] and labels.tolist() == [2, 0, 3]
    assert collate_padded([([5], 1), ([6, 7], 1)], pad_index=-1)[0].tolist() == [[5, -1], [6, 7]]
    with pytest.raises(ValueError):
        collate_padded([([], 1)])


def test_dataloader_end_to_end() -> None:
    texts = ["a b c", "a", "b c", "c c c c", "a b"]
    vocab = Vocab.build(tokenize(t) for t in texts)
    data = EncodedDataset(numericalize(texts, vocab), [0, 1, 2, 3, 0])
    assert data.lengths == [3, 1, 2, 4, 2] and data[3] == (vocab.encode(["c"] * 4), 3)
    loader = DataLoader(data, batch_sampler=BucketBatchSampler(data.lengths, 2, seed=1), collate_fn=collate_padded)
    seen = []
    for ids, lengths, labels in loader:
        assert ids.shape == (len(lengths), int(lengths.max()))
        assert bool((ids[torch.arange(ids.shape[1]) >= lengths[:, None]] == vocab.pad_index).all())
        seen += labels.tolist()
    assert sorted(seen) == [0, 0, 1, 2, 3]


# --- BucketBatchSampler ---------------------------------------------------------------------------------------

_RNG = random.Random(0)
LENGTHS = [_RNG.randint(1, 200) for _ in range(1003)]


def flat(batches: list[list[int]]) -> list[int]:
    return [i for batch in batches for i in batch]


@pytest.mark.parametrize("shuffle", [True, False])
def test_every_index_once_per_epoch(shuffle: bool) -> None:
    sampler = BucketBatchSampler(LENGTHS, 32, shuffle=shuffle, bucket_size=320)
    for epoch in range(2):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler) == 32  # ceil(1003 / 32)
        assert sorted(flat(batches)) == list(range(len(LENGTHS)))
        assert all(isinstance(i, int) for i in batches[0])
        assert sum(len(b) < 32 for b in batches) <= 4  # only a pool's last batch is short (1003 -> 4 pools)


def test_drop_last() -> None:
    sampler = BucketBatchSampler(LENGTHS, 32, bucket_size=320, drop_last=True)
    batches = list(sampler)
    assert len(batches) == len(sampler) and all(len(b) == 32 for b in batches)
    assert len(set(flat(batches))) == len(flat(batches))


def test_batches_have_similar_lengths() -> None:
    sampler = BucketBatchSampler(LENGTHS, 32)
    random_batches = [list(range(i, min(i + 32, len(LENGTHS)))) for i in range(0, len(LENGTHS), 32)]
    bucketed = padding_waste(LENGTHS, sampler)
    assert bucketed < 0.05 < 0.3 < padding_waste(LENGTHS, random_batches)
    spread = [max(LENGTHS[i] for i in b) - min(LENGTHS[i] for i in b) for b in sampler]
    assert max(spread) <= 10  # 1003 lengths in 1..200, one pool of 3,200: 32 neighbours in sorted order
    assert padding_waste(LENGTHS, BucketBatchSampler(LENGTHS, 32, shuffle=False)) <= bucketed


def test_deterministic_given_seed_and_epoch() -> None:
    a, b = BucketBatchSampler(LENGTHS, 16, seed=3), BucketBatchSampler(LENGTHS, 16, seed=3)
    assert list(a) == list(b)
    b.set_epoch(1)
    assert list(a) != list(b)
    a.set_epoch(1)
    assert list(a) == list(b)
    assert list(BucketBatchSampler(LENGTHS, 16, seed=4)) != list(BucketBatchSampler(LENGTHS, 16, seed=3))
    unshuffled = BucketBatchSampler(LENGTHS, 16, shuffle=False)
    assert list(unshuffled) == list(BucketBatchSampler(LENGTHS, 16, shuffle=False, seed=9))


@pytest.mark.parametrize(
    ("n", "replicas", "drop_last"), [(1003, 3, False), (1003, 3, True), (960, 4, False), (70, 4, False)]
)
def test_ranks_get_equal_disjoint_shares(n: int, replicas: int, drop_last: bool) -> None:
    lengths = LENGTHS[:n]
    full = BucketBatchSampler(lengths, 32, seed=5, drop_last=drop_last)
    full.set_epoch(2)
    all_batches = list(full)
    shares = []
    for rank in range(replicas):
        sampler = BucketBatchSampler(lengths, 32, seed=5, drop_last=drop_last, num_replicas=replicas, rank=rank)
        sampler.set_epoch(2)
        shares.append(list(sampler))
        assert len(shares[-1]) == len(sampler)
    counts = {len(share) for share in shares}
    assert len(counts) == 1  # every rank steps the same number of times
    per_rank = counts.pop()
    dealt = [shares[r][k] for k in range(per_rank) for r in range(replicas)]  # round-robin order
    if drop_last:
        assert per_rank == len(all_batches) // replicas and dealt == all_batches[: len(dealt)]
    else:
        assert per_rank == -(-len(all_batches) // replicas)
        assert dealt[: len(all_batches)] == all_batches  # every batch, each on exactly one rank ...
        assert all(batch in all_batches[: len(dealt) - len(all_batches)] for batch in dealt[len(all_batches):])
        assert set(flat(dealt)) == set(range(n))  # ... plus wrapped-around repeats to even the counts


def test_sampler_arguments_are_checked() -> None:
    with pytest.raises(ValueError):
        BucketBatchSampler(LENGTHS, 0)
    with pytest.raises(ValueError):
        BucketBatchSampler(LENGTHS, 8, num_replicas=2, rank=2)
    assert BucketBatchSampler(LENGTHS, 32, bucket_size=100).bucket_size == 128  # a multiple of batch_size
    assert list(BucketBatchSampler([], 4)) == [] and len(BucketBatchSampler([], 4)) == 0
