"""Synthetic AG News for the tests, in one place: rows whose topic words say their class, mixed with filler
words, as examples or as the official CSV files (quoted ``"label","title","description"``, labels 1..4)."""

from __future__ import annotations

import csv
import random
from pathlib import Path

from gru_lib.data import NewsExample

WORDS = {
    0: ["election", "minister", "troops", "president", "embassy"],
    1: ["match", "goal", "coach", "season", "striker"],
    2: ["shares", "profit", "market", "bank", "earnings"],
    3: ["software", "internet", "computer", "nasa", "chip"],
}
FILLER = ["the", "a", "of", "in", "today", "said", "new", "on", "and", "report"]


def make_examples(n: int, seed: int) -> list[NewsExample]:
    """``n`` rows, classes in turn (0, 1, 2, 3, 0, ...): about half the title's words and a third of the
    description's are the class's topic words."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = i % 4

        def words(k: int, p: float, label: int = label) -> str:
            return " ".join(rng.choice(WORDS[label] if rng.random() < p else FILLER) for _ in range(k))

        rows.append(NewsExample(label, words(rng.randint(2, 6), 0.5), words(rng.randint(3, 14), 0.3)))
    return rows


def write_split(path: Path, n: int, seed: int) -> None:
    """:func:`make_examples` ``(n, seed)`` as an AG News CSV file at ``path`` (directories created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, quoting=csv.QUOTE_ALL, lineterminator="\n")
        for row in make_examples(n, seed):
            writer.writerow([str(row.label + 1), row.title, row.description])


def write_ag_news(root: Path, train_rows: int, test_rows: int) -> Path:
    """``root/ag_news/{train,test}.csv`` (seeds 0 and 1); returns ``root``, the data directory."""
    write_split(root / "ag_news" / "train.csv", train_rows, 0)
    write_split(root / "ag_news" / "test.csv", test_rows, 1)
    return root


def train_with_cli(data_dir: Path, out: Path, flags: list[str]) -> Path:
    """Run ``python -m gru_lib train`` in-process on ``data_dir`` into ``out`` (asserting it succeeds) and give the
    caller back its thread count, which ``--threads`` changes."""
    import torch

    from gru_lib.cli import main

    threads = torch.get_num_threads()
    try:
        assert main(["train", "--data", str(data_dir), "--out", str(out), *flags]) == 0
    finally:
        torch.set_num_threads(threads)
    return out
