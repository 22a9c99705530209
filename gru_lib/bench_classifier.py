"""The chapter 5 goal, measured: `python -m gru_lib train` with its defaults, 3 seeds, against TF-IDF + logistic
regression trained on the same rows, both scored on the official test split.

    GRU_LIB_DATA=../shared/data python -m gru_lib.bench_classifier --out runs/goal [--seeds 0 1 2] [-- ARGS]

Arguments after ``--`` go to every ``train`` run (ablations). Prints one line per seed and the means; writes
``summary.json`` into ``--out``. Training wall time depends on what else runs on the machine, so the CPU time
of each run is recorded too.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from gru_lib.atomic import atomic_write
from gru_lib.baseline import tfidf_baseline
from gru_lib.data import CLASSES, default_data_dir, load_ag_news
from gru_lib.metrics import classification_report, confusion_matrix


def baseline(data_dir: Path) -> dict:
    """TF-IDF (words and word pairs, sublinear tf) + logistic regression with a fixed C=10, trained on all the
    training rows (chapter 5 instead tunes C on validation rows: ``gru_lib.ablation``)."""
    train, test = load_ag_news("train", data_dir), load_ag_news("test", data_dir)
    pred, _ = tfidf_baseline(train, test)
    report = classification_report(confusion_matrix([e.label for e in test], pred, len(CLASSES)), CLASSES)
    return {"train_rows": len(train), "accuracy": report["accuracy"], "macro_f1": report["macro_f1"]}


def train_run(data_dir: Path, out: Path, seed: int, threads: int, extra: list[str]) -> dict:
    """One ``python -m gru_lib train`` run in a subprocess; its test scores, times and steps."""
    command = [sys.executable, "-m", "gru_lib", "train", "--data", str(data_dir), "--out", str(out),
               "--seed", str(seed), "--threads", str(threads), "--no-progress", *extra]
    started = time.perf_counter()
    subprocess.run(command, check=True)
    metrics = json.loads((out / "metrics.json").read_text())
    return {"seed": seed, "accuracy": metrics["test"]["accuracy"], "macro_f1": metrics["test"]["macro_f1"],
            "train_seconds": metrics["train_seconds"], "cpu_seconds": metrics["cpu_seconds"],
            "steps": metrics["steps"], "epochs": len(metrics["history"]),
            "wall_seconds": time.perf_counter() - started}


def main() -> int:
    from gru_lib.cli import bench_classifier_args

    args = bench_classifier_args(description=__doc__)
    data_dir = args.data or default_data_dir()
    extra = [a for a in args.train_args if a != "--"]
    runs = []
    for seed in args.seeds:
        runs.append(train_run(data_dir, args.out / f"seed{seed}", seed, args.threads, extra))
        print(json.dumps(runs[-1]), flush=True)
    base = baseline(data_dir)
    summary = {
        "train_args": extra,
        "runs": runs,
        "mean_accuracy": statistics.mean(r["accuracy"] for r in runs),
        "mean_macro_f1": statistics.mean(r["macro_f1"] for r in runs),
        "mean_train_seconds": statistics.mean(r["train_seconds"] for r in runs),
        "baseline": base,
    }
    atomic_write(args.out / "summary.json", json.dumps(summary, indent=2) + "\n")
    print(f"GRU (mean of {len(runs)} seeds): accuracy {summary['mean_accuracy']:.4f}, macro-F1 "
          f"{summary['mean_macro_f1']:.4f}, training {summary['mean_train_seconds']:.0f} s per run; "
          f"TF-IDF + logistic regression: accuracy {base['accuracy']:.4f}, macro-F1 {base['macro_f1']:.4f} "
          f"({base['train_rows']:,} training rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
