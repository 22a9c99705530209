"""Chapter 5's ablation study: what each part of the classifier contributes, over several seeds, against
tuned linear baselines, all on the same rows.

    GRU_LIB_DATA=/path/to/data python -m gru_lib.ablation --out ablation.json

The study chapter 5 shows ships with the library (:data:`STORED_STUDY`, read by :func:`load_study`), so the
chapter runs wherever gru_lib is installed; ``load_study("ablation.json")`` reads a study you ran yourself.

The training rows are split once (:func:`gru_lib.prepare.split_validation`, seed 0, ``--val-fraction``) into
fit and validation rows, the same for every run. Each variant of :data:`VARIANTS` is trained on the fit rows
for every seed (the seed sets weights, dropout and batch order, not the split), scored on the validation rows
after its last epoch and once on the test rows. The linear baselines (:mod:`gru_lib.baseline`: TF-IDF of
words, or of words and word pairs; logistic regression or a linear SVM) choose ``C`` on the validation rows
and are fitted on the fit rows only, then scored once on the test rows.

The JSON records, per run, the validation and test scores, the parameters the variant uses, the seconds,
and where it ran (processor, torch version, threads, git commit); and the SHA-256 of the training and test
rows (:func:`rows_sha256`), so that a reader can tell whether the stored results belong to the rows they have.
An existing ``--out`` is refused unless ``--force``. The JSON is written after every run (``complete`` false until
the end), so a stopped study keeps what it measured. ``--jobs N`` trains N models at a time, each in its own
process with ``--threads`` threads.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import functools
import hashlib
import json
import multiprocessing
import os
import platform
import statistics
import subprocess
import sys
import time
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gru_lib.atomic import atomic_write, terminate_as_interrupt
from gru_lib.baseline import C_GRID, MODELS, NGRAMS, tune_linear
from gru_lib.cli import (OneLineParser, file_in_the_way, job_count, open_fraction, positive_float, positive_int,
                         seed_value, thread_count)
from gru_lib.config import TrainConfig
from gru_lib.data import CLASSES, NewsExample, default_data_dir, load_ag_news
from gru_lib.errors import GruLibError
from gru_lib.isa import processor_name
from gru_lib.metrics import classification_report, confusion_matrix
from gru_lib.prepare import encode_examples, split_validation

__all__ = ["VARIANTS", "STORED_STUDY", "load_study", "rows_sha256", "machine_info", "run_variant", "run_baselines",
           "run_study", "summarize", "write_study", "main"]

#: name -> (model settings, what it is). ``default`` is the library's default model.
VARIANTS: dict[str, tuple[dict[str, Any], str]] = {
    "default": ({}, "bidirectional GRU, mean+max of its outputs, plus the bag of embeddings (emb)"),
    "gru_only": ({"pooling": "mean+max"}, "bidirectional GRU, mean+max of its outputs (no emb)"),
    "emb_only": ({"pooling": "emb"}, "bag of embeddings only (the GRU's outputs are not used)"),
    "uni_default": ({"bidirectional": False}, "one-direction GRU, mean+max, plus emb"),
    "uni_gru_only": ({"bidirectional": False, "pooling": "mean+max"}, "one-direction GRU, mean+max (no emb)"),
}


def rows_sha256(rows: Sequence[NewsExample]) -> str:
    """SHA-256 of the rows as read from the CSV: label, title and description of each row, in order."""
    digest = hashlib.sha256()
    for row in rows:
        digest.update(f"{row.label}\t{row.title}\t{row.description}\n".encode())
    return digest.hexdigest()


def _git_commit() -> str | None:
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                              text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None if done.returncode == 0 else None


def machine_info(threads: int) -> dict[str, Any]:
    """Where the study ran: processor name, logical CPUs, torch and Python versions, threads, git commit."""
    return {"processor": processor_name(), "cpus": len(os.sched_getaffinity(0)),
            "torch": torch.__version__, "python": platform.python_version(), "threads": threads,
            "git_commit": _git_commit()}


def _used_parameters(model: torch.nn.Module, pooling: str) -> int:
    """Parameters the variant uses: the recurrent layer's are left out when no pooling reads its outputs."""
    skip_rnn = set(pooling.split("+")) == {"emb"}
    return sum(p.numel() for name, p in model.named_parameters() if not (skip_rnn and name.startswith("rnn.")))


def run_variant(name: str, seed: int, base: TrainConfig, fit: Sequence[NewsExample],
                validation: Sequence[NewsExample], test: Sequence[NewsExample], threads: int) -> dict[str, Any]:
    """Train variant ``name`` with ``seed`` on ``fit`` (evaluated on ``validation`` every epoch), score the test
    rows once; its scores, parameters and seconds (``seconds``: the whole call, vocabulary and word vectors
    included; ``train_seconds``: the optimisation steps only)."""
    from gru_lib.evaluate import evaluate_model
    from gru_lib.train import train

    config = dataclasses.replace(base, seed=seed, val_fraction=0.0, **VARIANTS[name][0])
    started, cpu_started = time.perf_counter(), time.process_time()
    result = train(config, fit, validation, log=None, progress=False, threads=threads)
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    test_set = encode_examples(test, result.vocab, config)
    cm, _ = evaluate_model(result.model, test_set, batch_size=config.eval_batch_size,
                           pad_index=result.vocab.pad_index)
    report = classification_report(cm, CLASSES)
    return {"variant": name, "seed": seed, "pooling": config.model.pooling,
            "bidirectional": config.model.bidirectional,
            "val_accuracy": result.history[-1]["eval_accuracy"],
            "val_macro_f1": result.history[-1]["eval_macro_f1"],
            "test_accuracy": report["accuracy"], "test_macro_f1": report["macro_f1"],
            "parameters": _used_parameters(result.model, config.model.pooling),
            "seconds": seconds, "cpu_seconds": cpu_seconds, "train_seconds": result.train_seconds,
            "epochs": config.epochs,
            "steps": result.steps}


def run_baselines(fit: Sequence[NewsExample], validation: Sequence[NewsExample], test: Sequence[NewsExample],
                  grid: Sequence[float] = C_GRID) -> list[dict[str, Any]]:
    """Every TF-IDF (:data:`NGRAMS`) x linear model (:data:`MODELS`): ``C`` chosen on ``validation``, fitted on
    ``fit`` only, scored once on ``test``."""
    y_test = np.array([e.label for e in test])
    rows = []
    for ngrams in NGRAMS:
        for model in MODELS:
            started = time.perf_counter()
            tuned = tune_linear(fit, validation, ngrams=ngrams, model=model, grid=grid)
            report = classification_report(confusion_matrix(y_test, tuned.predict(test), len(CLASSES)), CLASSES)
            rows.append({"ngrams": ngrams, "model": model, "C": tuned.C, "features": tuned.features,
                         "val_accuracy_by_C": {str(c): a for c, a in tuned.validation.items()},
                         "val_accuracy": tuned.validation[tuned.C], "test_accuracy": report["accuracy"],
                         "test_macro_f1": report["macro_f1"], "seconds": time.perf_counter() - started})
    return rows


def summarize(runs: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per variant: mean and standard deviation (n - 1; 0 for one run) over seeds of the scores and seconds."""
    keys = ("val_accuracy", "test_accuracy", "test_macro_f1", "seconds", "cpu_seconds", "parameters")
    table: dict[str, dict[str, float]] = {}
    for name in dict.fromkeys(r["variant"] for r in runs):
        mine = [r for r in runs if r["variant"] == name]
        row: dict[str, float] = {"runs": len(mine)}
        for key in keys:
            values = [float(r[key]) for r in mine]
            row[f"{key}_mean"] = statistics.mean(values)
            row[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        table[name] = row
    return table


def _record(rows: dict[str, Any], machine: dict[str, Any], base: TrainConfig, variants: Sequence[str],
            seeds: Sequence[int], runs: list[dict[str, Any]], baselines: list[dict[str, Any]],
            grid: Sequence[float], started: float, complete: bool) -> dict[str, Any]:
    """The study as stored: rows, machine, settings, runs, their summary and the baselines."""
    return {
        "complete": complete, "rows": rows, "machine": machine, "settings": base.to_dict(),
        "variants": {name: {"settings": VARIANTS[name][0], "description": VARIANTS[name][1]}
                     for name in variants},
        "seeds": list(seeds), "runs": runs, "summary": summarize(runs), "baselines": baselines,
        "baseline_grid": list(grid),
        "baseline_note": "C chosen by validation accuracy; the chosen model is fitted on the fit rows only",
        "wall_seconds": time.perf_counter() - started,
    }


Task = tuple[str, int] | None  # (variant, seed), or None: the baselines


def _run_task(task: Task, base: TrainConfig, fit: Sequence[NewsExample], validation: Sequence[NewsExample],
              test: Sequence[NewsExample], threads: int, grid: Sequence[float]) -> Any:
    """One unit of the study: the baselines (``task`` None) or one variant and seed."""
    if task is None:
        return run_baselines(fit, validation, test, grid)
    return run_variant(task[0], task[1], base, fit, validation, test, threads)


def _results(tasks: Sequence[Task], jobs: int, work: typing.Callable[[Task], Any]
             ) -> typing.Iterator[tuple[Task, Any]]:
    """(task, result) as each finishes: in this process (``jobs`` 1) or in ``jobs`` worker processes."""
    if jobs == 1:
        for task in tasks:
            yield task, work(task)
        return
    context = multiprocessing.get_context("spawn")  # fresh interpreters: no forked torch threads
    pool = concurrent.futures.ProcessPoolExecutor(jobs, mp_context=context)
    try:
        futures = {pool.submit(work, task): task for task in tasks}
        for future in concurrent.futures.as_completed(futures):
            yield futures[future], future.result()
    except BaseException:  # Ctrl-C, SIGTERM (main), a failed task: stop the workers too
        for process in list(getattr(pool, "_processes", {}).values()):
            process.terminate()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def run_study(data_dir: Path, *, seeds: Sequence[int], variants: Sequence[str], base: TrainConfig,
              val_fraction: float, threads: int, grid: Sequence[float] = C_GRID, jobs: int = 1,
              save: typing.Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """The whole study on the rows in ``data_dir``: the baselines and every variant for every seed, ``jobs`` at
    a time. Each result is printed as one JSON line (flushed, so a log file follows the study), and ``save``
    receives the study so far (``complete`` false) after each, so a stopped study keeps what it measured."""
    started, machine = time.perf_counter(), {**machine_info(threads), "jobs": jobs}
    train_rows = load_ag_news("train", data_dir, download=False)
    test_rows = load_ag_news("test", data_dir, download=False)
    fit, validation = split_validation(train_rows, val_fraction, seed=0)
    rows = {"train": len(train_rows), "fit": len(fit), "validation": len(validation), "test": len(test_rows),
            "train_sha256": rows_sha256(train_rows), "test_sha256": rows_sha256(test_rows),
            "split": {"val_fraction": val_fraction, "seed": 0}}
    tasks: list[Task] = [None, *((name, seed) for name in variants for seed in seeds)]
    work = functools.partial(_run_task, base=base, fit=fit, validation=validation, test=test_rows,
                             threads=threads, grid=grid)
    runs: list[dict[str, Any]] = []
    baselines: list[dict[str, Any]] = []
    for task, result in _results(tasks, jobs, work):
        if task is None:
            baselines = result
        else:
            runs = sorted([*runs, result], key=lambda r: (list(variants).index(r["variant"]), r["seed"]))
        for line in result if task is None else [result]:
            print(json.dumps({k: v for k, v in line.items() if k != "val_accuracy_by_C"}), flush=True)
        if save is not None:
            save(_record(rows, machine, base, variants, seeds, runs, baselines, grid, started, False))
    return _record(rows, machine, base, variants, seeds, runs, baselines, grid, started, True)


STORED_STUDY = Path(__file__).parent / "study" / "ablation.json"


def load_study(path: str | Path | None = None) -> dict[str, Any]:
    """A study's JSON (default: :data:`STORED_STUDY`, the one chapter 5 shows); a missing or malformed file
    raises :class:`GruLibError` naming it."""
    path = Path(path) if path is not None else STORED_STUDY
    try:
        study = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise GruLibError(f"{path}: cannot read the ablation study ({error})") from None
    if not isinstance(study, dict) or not {"runs", "baselines", "rows"} <= study.keys():
        raise GruLibError(f"{path}: not an ablation study (no runs, baselines and rows)")
    return study


def write_study(path: Path, study: dict[str, Any]) -> None:
    """Write ``study`` to ``path`` as JSON, atomically (:func:`gru_lib.atomic.atomic_write`: ``path`` holds the
    previous study or the new one, and no temporary file is left on any failure), creating its directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(study, indent=1) + "\n")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The flags of ``python -m gru_lib.ablation`` (sizes and epochs default to the library's defaults)."""
    defaults = TrainConfig()
    parser = OneLineParser(prog="python -m gru_lib.ablation", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="the JSON file to write")
    parser.add_argument("--force", action="store_true", help="overwrite an existing --out")
    parser.add_argument("--data", type=Path, default=None, help="the directory holding ag_news/ "
                        "(default: GRU_LIB_DATA; the files are read, never downloaded)")
    parser.add_argument("--seeds", type=seed_value, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--val-fraction", type=open_fraction, default=0.1)
    parser.add_argument("--threads", type=thread_count, default=1, help="intra-op threads per training")
    parser.add_argument("--jobs", type=job_count, default=1, help="trainings (and the baselines) run at once, "
                        "each in its own process")
    parser.add_argument("--epochs", type=positive_int, default=defaults.epochs)
    parser.add_argument("--embed-dim", type=positive_int, default=defaults.embed_dim)
    parser.add_argument("--hidden-size", type=positive_int, default=defaults.hidden_size)
    parser.add_argument("--max-len", type=positive_int, default=defaults.max_len)
    parser.add_argument("--grid", type=positive_float, nargs="+", default=list(C_GRID), help="values of C to try")
    args = parser.parse_args(argv)
    _check_out(parser, args.out, args.force)
    return args


def _check_out(parser: argparse.ArgumentParser, out: Path, force: bool) -> None:
    """Refuse, before any training, an ``--out`` the study could not write: a directory (even with
    ``--force``), a path below a file, or an existing file without ``--force``."""
    if not str(out).strip() or out.is_dir():
        parser.error(f"--out {out}: is a directory or empty (name the JSON file to write)")
    below_file = file_in_the_way(out.parent)
    if below_file is not None:
        parser.error(f"--out {out}: {below_file} is not a directory")
    if out.exists() and not force:
        parser.error(f"--out {out} exists; pass --force to overwrite it")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the study, writing its JSON after every run (``complete`` true once it has finished). Ctrl-C or
    SIGTERM stops it and its workers; the JSON keeps the runs finished so far."""
    from gru_lib.errors import GruLibError

    args = parse_args(argv)
    command = " ".join(["python -m gru_lib.ablation", *(sys.argv[1:] if argv is None else argv)])
    base = TrainConfig(epochs=args.epochs, max_len=args.max_len, embed_dim=args.embed_dim,
                       hidden_size=args.hidden_size)
    try:
        study = run_study(args.data or default_data_dir(), seeds=args.seeds, variants=args.variants, base=base,
                          val_fraction=args.val_fraction, threads=args.threads, grid=args.grid, jobs=args.jobs,
                          save=lambda so_far: write_study(args.out, {"command": command, **so_far}))
    except (GruLibError, OSError) as error:
        print(f"error: python -m gru_lib.ablation: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"stopped: {args.out} holds the runs finished so far (complete: false)", file=sys.stderr)
        return 130
    write_study(args.out, {"command": command, **study})
    print(f"wrote {args.out} ({len(study['runs'])} runs, {study['wall_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    with terminate_as_interrupt():  # SIGTERM as Ctrl-C: the study stops its workers and keeps its JSON
        sys.exit(main())
