"""``python -m gru_lib COMMAND``: the command line, and the only module that parses arguments.

Commands: ``data`` (check AG News), ``train``, ``evaluate``, ``predict`` (the classifier, chapter 5) and
``bench`` (the GRU backends, chapter 6); :func:`bench_classifier_args` parses ``python -m
gru_lib.bench_classifier``. The ``train`` flags are made from the fields of :class:`gru_lib.config.TrainConfig`
and :class:`gru_lib.config.ModelConfig` (``hidden_size`` -> ``--hidden-size``, help and choices from each
field's metadata, booleans as ``--x/--no-x``), so the flags and their defaults have one home.

Every failure is one line on stderr and exit status 2, no traceback: a :class:`GruLibError`, a usage
mistake (flags are checked as they are parsed: devices, thread counts, batch sizes) and any
:class:`OSError`, worded in one place (:func:`gru_lib.errors.describe_os_error`: "no space left on device",
"permission denied"). A closed stdout (``predict ... | head -1``) ends quietly. Ctrl-C and SIGTERM stop with
one line and status 128 + the signal, leaving no half-written or temporary file (:mod:`gru_lib.atomic`).
``train --out`` must be new or empty, or hold a checkpoint and be given with ``--resume``, and one run at a
time holds it
(:func:`gru_lib.checkpoint.check_run_dir`, :func:`gru_lib.checkpoint.run_dir_lock`).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import shlex
import signal
import sys
import time
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gru_lib.atomic import atomic_output, atomic_write, terminate_as_interrupt
from gru_lib.config import ModelConfig, TrainConfig
from gru_lib import isa
from gru_lib.errors import CheckpointError, ConfigError, DataError, GruLibError, describe_os_error

if typing.TYPE_CHECKING:  # torch is imported when a command needs it, not for --help
    from gru_lib.bench import Shape

__all__ = ["main", "build_parser", "config_flags", "config_from_args", "bench_classifier_args"]

SEED_MAX = 2**32 - 1
MAX_THREADS = 4096  # --threads: far above any machine's cores, far below what overflows torch.set_num_threads
MAX_JOBS = 256  # --jobs: worker processes at once, each holding a model
_DATA_HELP = "directory holding ag_news/ (default: $GRU_LIB_DATA or the user cache, downloading)"


# ------------------------------------------------------------------------------------- flags from dataclasses


def config_flags() -> dict[str, tuple[str, dataclasses.Field, Any]]:
    """``{field name: (flag, field, type)}`` for every documented field of ModelConfig and TrainConfig."""
    flags = {}
    for cls in (ModelConfig, TrainConfig):
        hints = typing.get_type_hints(cls)
        for item in dataclasses.fields(cls):
            if "help" in item.metadata:
                flags[item.name] = ("--" + item.name.replace("_", "-"), item, hints[item.name])
    return flags


def _integer(text: str, low: int, high: int | None = None) -> int:
    """``text`` as an integer in ``low..high`` (no upper bound when ``high`` is None); anything else raises
    :class:`argparse.ArgumentTypeError` saying the bound it breaks (argparse names the flag)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be >= {low}, got {text!r}")
    if high is not None and value > high:
        raise argparse.ArgumentTypeError(f"must be <= {high}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1 (batch sizes, repeats, sizes)."""
    return _integer(text, 1)


def thread_count(text: str) -> int:
    """An argparse type: a thread count in ``1..MAX_THREADS`` (``torch.set_num_threads`` overflows on huge
    values, and more threads than that is a typo)."""
    return _integer(text, 1, MAX_THREADS)


def job_count(text: str) -> int:
    """An argparse type: how many worker processes at once, ``1..MAX_JOBS``."""
    return _integer(text, 1, MAX_JOBS)


def seed_value(text: str) -> int:
    """An argparse type: a random seed in ``0..SEED_MAX`` (what NumPy and ``torch.manual_seed`` both accept)."""
    return _integer(text, 0, SEED_MAX)


def _real(text: str) -> float:
    """``text`` as a finite float, else :class:`argparse.ArgumentTypeError` (nan and inf are refused)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """An argparse type: a finite number > 0 (regularisation strengths, time budgets)."""
    value = _real(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return value


def open_fraction(text: str) -> float:
    """An argparse type: a number strictly between 0 and 1 (a share of the rows)."""
    value = _real(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1), got {text!r}")
    return value


def _device(text: str) -> str:
    """An argparse type: a torch device these commands run on (cpu, or cuda when CUDA is available)."""
    import torch

    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a torch device (use cpu or cuda)") from None
    if device.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"{text!r}: this command runs on cpu or cuda only")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text!r}: CUDA is not available on this machine")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise argparse.ArgumentTypeError(f"{text!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return text


class OneLineParser(argparse.ArgumentParser):
    """Usage mistakes as one line on stderr (exit 2), like every other error of the command line.

    ``free_text="TEXT"`` marks a parser whose positional arguments are free text (``predict``): a text that
    starts with ``-`` (``-5%``) is taken for a flag, so its errors (a missing TEXT, an unknown argument) end
    with the hint to put ``--`` before it, and unknown arguments are reported by this parser, not its parent."""

    def __init__(self, *args: Any, free_text: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.free_text = free_text
        self._given: list[str] = []

    def parse_known_args(self, args: Sequence[str] | None = None,
                         namespace: argparse.Namespace | None = None) -> tuple[argparse.Namespace, list[str]]:
        """argparse's, remembering the arguments (for the hint); with ``free_text``, unknown ones are errors."""
        self._given = list(sys.argv[1:] if args is None else args)
        namespace, extras = super().parse_known_args(self._given, namespace)
        if self.free_text and extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return namespace, extras

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"error: {self.prog}: {message}{self._dash_hint()} (see --help)\n")

    def _dash_hint(self) -> str:
        """With ``free_text``: "; if '-5%' is a TEXT, ..." for the first argument before ``--`` that starts
        with ``-`` and is none of this parser's flags; else ""."""
        if not self.free_text:
            return ""
        given = self._given[: self._given.index("--")] if "--" in self._given else self._given
        for arg in given:
            if len(arg) > 1 and arg.startswith("-") and arg.split("=", 1)[0] not in self._option_string_actions:
                return (f"; if {arg!r} is a {self.free_text}, put -- before it: "
                        f"{self.prog} [flags] -- {shlex.quote(arg)}")
        return ""


def _scalar(kind: Any) -> type:
    """``int | None`` -> ``int``: the type a flag's text converts to."""
    if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
        kind = next(k for k in typing.get_args(kind) if k is not type(None))
    return kind


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    defaults = TrainConfig().to_dict()
    for name, (flag, item, kind) in config_flags().items():
        text = f"{item.metadata['help']} (default: {defaults[name]})"
        if kind is bool:
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            parser.add_argument(flag, dest=name, type=_scalar(kind), default=None,
                                choices=item.metadata.get("choices"), help=text)


def config_from_args(args: argparse.Namespace, base: dict[str, Any] | None = None) -> TrainConfig:
    """The configuration the flags give: the flags set on the command line over ``base`` (a stored
    configuration, when resuming) over the defaults."""
    given = {name: getattr(args, name) for name in config_flags() if getattr(args, name, None) is not None}
    config = TrainConfig.from_dict({**(base or {}), **given})
    if not 0 <= config.seed <= SEED_MAX:  # what NumPy and torch.manual_seed both accept
        raise ConfigError(f"--seed {config.seed}: must be in 0..{SEED_MAX}")
    return config


# ---------------------------------------------------------------------------------------- train, evaluate, predict


def _data_dir(args: argparse.Namespace) -> tuple[Path, bool]:
    """The directory holding ``ag_news/`` and whether downloading into it is allowed (only the default)."""
    from gru_lib.data import default_data_dir

    if args.data is None:
        return default_data_dir(), True
    path = Path(args.data).expanduser()
    if not path.is_dir():
        raise GruLibError(f"--data {args.data}: no such directory (give the directory that holds ag_news/)")
    return path, False


def _write_json(path: Path, value: Any) -> None:
    """Write ``value`` to ``path`` as indented JSON, atomically (:func:`gru_lib.atomic.atomic_write`)."""
    atomic_write(path, json.dumps(value, indent=2) + "\n")


def _add_train_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train", help="train the news classifier on AG News",
        description="Train the GRU news classifier; prints per-epoch metrics and writes checkpoint.pt, "
        "config.json, vocab.json and metrics.json into --out. The defaults are the book's recommended settings.",
    )
    parser.add_argument("--data", default=None, metavar="DIR", help=_DATA_HELP)
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="output directory: new or empty (created if missing), or a run's with --resume")
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    parser.add_argument("--train-rows", type=int, default=None, metavar="N",
                        help="train on the first N training rows only (default: all)")
    _add_config_flags(parser)
    parser.add_argument("--device", type=_device, default=None,
                        help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--threads", type=thread_count, default=None,
                        help=f"intra-op CPU threads, 1..{MAX_THREADS} (default: torch's)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=_run_train)


def _train_config(args: argparse.Namespace) -> TrainConfig:
    from gru_lib.checkpoint import check_run_dir, checkpoint_path, load_checkpoint

    path = checkpoint_path(check_run_dir(args.out, resume=args.resume))
    if not args.resume:
        return config_from_args(args)
    if not path.exists():
        raise CheckpointError(f"{path}: no checkpoint to resume from")
    stored = load_checkpoint(path, require_training=True)["train_config"]
    try:
        return config_from_args(args, stored)
    except (TypeError, GruLibError) as error:
        raise CheckpointError(f"{path}: incompatible configuration ({error})") from None


def _rows(args: argparse.Namespace, split: str) -> list:
    from gru_lib.data import load_ag_news

    data_dir, download = _data_dir(args)
    rows = load_ag_news(split, data_dir, download=download)
    if split == "train" and getattr(args, "train_rows", None) is not None:
        if args.train_rows < 1:
            raise GruLibError(f"--train-rows {args.train_rows}: must be >= 1")
        rows = rows[: args.train_rows]
    return rows


def _run_train(args: argparse.Namespace) -> int:
    from gru_lib.checkpoint import checkpoint_path, run_dir_lock
    from gru_lib.distributed import cleanup, init_distributed, resume_on_restart

    # Under torchrun --max-restarts, a restarted worker continues the run's checkpoint.
    args.resume = args.resume or resume_on_restart(checkpoint_path(Path(args.out).expanduser()))
    config = _train_config(args)
    ctx = init_distributed(device=args.device)
    try:
        train_rows, test_rows = _rows(args, "train"), _rows(args, "test")
        out = Path(args.out).expanduser()
        with contextlib.ExitStack() as stack:
            if ctx.is_main:  # one run per directory; also proves --out writable before training starts
                stack.enter_context(run_dir_lock(out))
            return _train_and_write(args, config, ctx, out, train_rows, test_rows)
    finally:
        cleanup(ctx)


def _train_and_write(args: argparse.Namespace, config: TrainConfig, ctx: Any, out: Path, train_rows: list,
                     test_rows: list) -> int:
    """Train, then (main process) write config.json, vocab.json and metrics.json into ``out``."""
    from gru_lib.train import TrainingInterrupted, train

    if ctx.is_main:
        held = f" ({config.val_fraction:.0%} of them held out for validation)" if config.val_fraction else ""
        print(f"training on {len(train_rows):,} rows{held}, evaluating on {len(test_rows):,} test rows "
              f"({ctx.world_size} process{'es' if ctx.world_size > 1 else ''}, {ctx.device})", flush=True)
    started, cpu_started = time.perf_counter(), time.process_time()
    try:
        result = train(config, train_rows, test_rows, out_dir=out, resume=args.resume, ctx=ctx,
                       progress=False if args.no_progress else None, log=_print_flushed, handle_sigterm=True,
                       threads=args.threads)
    except TrainingInterrupted as stopped:
        if ctx.is_main:
            print(f"interrupted: {stopped}", file=sys.stderr, flush=True)
        return 128 + stopped.signum
    if ctx.is_main:
        _write_train_outputs(out, result, {
            "train_rows": result.extra["train_rows"], "validation_rows": result.extra["validation_rows"],
            "test_rows": len(test_rows), "processes": ctx.world_size,
            "wall_seconds": time.perf_counter() - started,
            # CPU time of this process (training and evaluation, all threads): robust to a busy machine.
            "cpu_seconds": time.process_time() - cpu_started,
        })
    return 0


def _print_flushed(message: str) -> None:
    print(message, flush=True)


def _write_train_outputs(out: Path, result: Any, run: dict[str, Any]) -> None:
    """config.json, vocab.json and metrics.json of a finished run."""
    _write_json(out / "config.json", {"train": result.config.to_dict(), "model": result.model.config()})
    result.vocab.save(out / "vocab.json")
    metrics = {
        **run,
        "steps": result.steps,
        "train_seconds": result.train_seconds,
        "embedding_init_seconds": result.extra["init_seconds"],
        "history": [{k: v for k, v in h.items() if k != "eval"} for h in result.history],
        "validation": result.extra["validation"],  # None without --val-fraction (each epoch scored the test rows)
        "test": result.report,
    }
    _write_json(out / "metrics.json", metrics)
    print(f"test accuracy {result.report['accuracy']:.4f}  macro-F1 {result.report['macro_f1']:.4f}; "
          f"wrote {out / 'checkpoint.pt'} and metrics.json", flush=True)


def _add_evaluate_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate", help="evaluate a trained classifier on the AG News test split",
        description="Accuracy, macro-F1, per-class scores and the confusion matrix of a trained classifier.",
    )
    parser.add_argument("--model", required=True, metavar="DIR", help="the --out directory of `train`")
    parser.add_argument("--data", default=None, metavar="DIR", help=_DATA_HELP)
    parser.add_argument("--split", default="test", choices=("train", "test"), help="which split (default: test)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--batch-size", type=positive_int, default=256, help="texts per batch (default: 256)")
    parser.add_argument("--device", type=_device, default="cpu", help="torch device (default: cpu)")
    parser.set_defaults(func=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> int:
    from gru_lib.data import CLASSES
    from gru_lib.evaluate import evaluate_model, load_classifier
    from gru_lib.metrics import classification_report
    from gru_lib.prepare import encode_examples

    model, vocab, config, _ = load_classifier(args.model, device=args.device)
    rows = _rows(args, args.split)
    cm, loss = evaluate_model(model, encode_examples(rows, vocab, config), batch_size=args.batch_size,
                              pad_index=vocab.pad_index)
    report = classification_report(cm, CLASSES)
    if args.json:
        print(json.dumps({"split": args.split, "rows": len(rows), "loss": loss, **report}))
        return 0
    print(f"{args.split}: {len(rows):,} rows  accuracy {report['accuracy']:.4f}  macro-F1 {report['macro_f1']:.4f}"
          f"  loss {loss:.4f}")
    print(f"{'class':<10} {'precision':>9} {'recall':>7} {'f1':>7} {'support':>8}")
    for row in report["per_class"]:
        print(f"{row['class']:<10} {row['precision']:>9.4f} {row['recall']:>7.4f} {row['f1']:>7.4f} "
              f"{row['support']:>8}")
    print("confusion matrix (rows: true, columns: predicted; " + ", ".join(CLASSES) + ")")
    for line in report["confusion_matrix"]:
        print("  " + " ".join(f"{v:>6}" for v in line))
    return 0


def _add_predict_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "predict", help="predict the topic of texts with a trained classifier",
        description="Print the predicted topic and its probability for each text, one line each. Without "
        "--model: the classifier that ships with gru_lib (gru_lib/shipped_model), no training needed. "
        "A text that starts with '-' goes after --: predict -- '-5% drop in sales'.",
        free_text="TEXT",
    )
    parser.add_argument("--model", default=None, metavar="PATH",
                        help="the --out directory of `train`, or a shipped model file (default: the shipped model)")
    parser.add_argument("texts", nargs="+", metavar="TEXT", help="texts to classify")
    parser.add_argument("--json", action="store_true", help="print one JSON object per text")
    parser.add_argument("--device", type=_device, default="cpu", help="torch device (default: cpu)")
    parser.set_defaults(func=_run_predict)


def _run_predict(args: argparse.Namespace) -> int:
    from gru_lib.data import CLASSES
    from gru_lib.evaluate import predict_logits
    from gru_lib.text import numericalize, tokenize

    blank = [i for i, text in enumerate(args.texts, 1) if not text.strip()]
    if blank:
        raise GruLibError(f"TEXT {blank[0]}: empty or only whitespace (give the text to classify)")
    _check_utf8(args.texts)
    _tolerant_stdout()
    model, vocab, config = _predict_model(args.model, args.device)
    wordless = [i for i, text in enumerate(args.texts, 1) if not tokenize(text, clean=config.clean_text)]
    if wordless:
        raise GruLibError(f"TEXT {wordless[0]}: no words left after cleaning (markup or entities only, such as "
                          "'&nbsp;' or '<br>'): give the text to classify")
    ids = numericalize(args.texts, vocab, max_len=config.max_len, clean=config.clean_text)
    probs = predict_logits(model, ids, pad_index=vocab.pad_index).softmax(dim=1)
    for text, row in zip(args.texts, probs):
        k = int(row.argmax())
        if args.json:
            print(json.dumps({"text": text, "topic": CLASSES[k], "probability": float(row[k]),
                              "probabilities": dict(zip(CLASSES, row.tolist()))}))
        else:
            print(f"{CLASSES[k]}\t{float(row[k]):.4f}\t{_one_line(text)}")
    return 0


def _check_utf8(texts: Sequence[str]) -> None:
    """Refuse (:class:`GruLibError`, naming it) a TEXT whose bytes on the command line were not valid UTF-8:
    Python hands them over as lone surrogates (``b'\\xff'`` -> ``'\\udcff'``), which no stream can write."""
    for i, text in enumerate(texts, 1):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as error:
            byte = ord(text[error.start]) & 0xFF
            raise GruLibError(f"TEXT {i}: not valid UTF-8 (byte 0x{byte:02x} at character {error.start + 1}); "
                              "give the text in UTF-8") from None


def _tolerant_stdout() -> None:
    """Make stdout write what its encoding cannot hold (an ASCII locale, ``PYTHONIOENCODING=ascii``) as
    backslash escapes (``caf\\xe9``) instead of failing, so each text still gets its one line."""
    try:
        sys.stdout.reconfigure(errors="backslashreplace")  # type: ignore[union-attr]
    except (AttributeError, ValueError, OSError):
        pass  # not a text stream that can be reconfigured (replaced by the caller): write as it is


# What str.splitlines breaks on, and the tab of the output's columns, written as Python writes them.
_ONE_LINE = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r",
                           **{c: f"\\x{ord(c):02x}" for c in "\x0b\x0c\x1c\x1d\x1e\x85"},
                           **{c: f"\\u{ord(c):04x}" for c in "\u2028\u2029"}})


def _predict_model(given: str | None, device: str) -> tuple[Any, Any, TrainConfig]:
    """The classifier ``predict --model`` names: the shipped model (no ``--model``), a shipped model file,
    a training checkpoint file, or the ``--out`` directory of ``train``; one-line errors name ``--model``."""
    from gru_lib.evaluate import load_classifier
    from gru_lib.shipped import MAGIC, load_shipped

    if given is None:
        return load_shipped(None, device=device)[:3]
    if not given.strip():
        raise GruLibError("--model: empty path (give a train --out directory or a model file, or leave --model out "
                          "for the shipped model)")
    path = Path(given)
    if not path.exists():
        raise GruLibError(f"--model {given}: no such file or directory")
    if path.is_file():
        with open(path, "rb") as handle:
            if handle.read(len(MAGIC)) == MAGIC:
                return load_shipped(path, device=device)[:3]
    return load_classifier(path, device=device)[:3]  # a run directory or a training checkpoint file


def _one_line(text: str) -> str:
    """``text`` on one line of the tab-separated output: a backslash, a tab and every line break written as
    Python escapes them (``\\\\``, ``\\t``, ``\\n``, ``\\u2028``, ...), so each text is exactly one line."""
    return text.translate(_ONE_LINE)


# ------------------------------------------------------------------------------------------------- data, bench


def _add_data_parser(subparsers: argparse._SubParsersAction) -> None:
    from gru_lib.data import DATA_ENV

    parser = subparsers.add_parser("data", help="check the AG News files and report their row counts")
    parser.add_argument("--data-dir", default=None,
                        help=f"directory holding ag_news/ (default: ${DATA_ENV} or the user cache)")
    parser.add_argument("--download", action="store_true", help="download missing files into the data directory")
    parser.set_defaults(func=_run_data)


def _run_data(args: argparse.Namespace) -> int:
    """Without ``--download`` every split must be there: a missing file, or a directory in its place, is a
    one-line error naming the file (exit 2)."""
    from gru_lib.data import SPLITS, data_command, default_data_dir, refuse_non_file

    root = Path(args.data_dir).expanduser() if args.data_dir is not None else default_data_dir()
    for split in SPLITS:
        path = root / "ag_news" / f"{split}.csv"
        if not path.is_file():
            refuse_non_file(path)  # a directory, a symlink loop, a device: not "missing"
        if not path.exists() and not args.download:
            raise DataError(f"{path}: missing (pass --download to fetch the {split} split)")
    return data_command(args.data_dir, download=args.download)


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _add_bench_parser(subparsers: argparse._SubParsersAction) -> None:
    from gru_lib import bench, peers

    parser = subparsers.add_parser(
        "bench", help="time nn.GRU, gru_lib.GRU, FastGRU (fp32, bf16) and MinGRU against nn.GRU, torch.mm and oneDNN",
        description=bench.__doc__.split("\n\n")[0] if bench.__doc__ else None,
    )
    parser.add_argument("--full", action="store_true", help="the full sweep: T 16..4096, B 1..256, H 64..1024")
    parser.add_argument("--shape", type=_int_list, action="append", default=None, metavar="B,T,D,H",
                        help=f"the centre of the sweeps (default {','.join(map(str, bench.BASE))}); with --peers "
                        "the shapes to time, forward and forward + backward (repeat the flag for several; default "
                        "forward 64,64,128,256 1,512,128,256 16,1024,128,256 and forward + backward 64,64,128,256)")
    parser.add_argument("--steps", type=_int_list, help="override the swept sequence lengths")
    parser.add_argument("--batch", type=_int_list, help="override the swept batch sizes")
    parser.add_argument("--hidden", type=_int_list, help="override the swept hidden sizes")
    parser.add_argument("--backends", default=None, help="comma-separated (default: all; with --peers: "
                        f"{','.join(peers.PEERS)})")
    parser.add_argument("--repeats", type=positive_int, default=5, help="interleaved rounds; medians (default 5)")
    parser.add_argument("--threads", type=thread_count, default=None, help="torch threads (default: torch's); "
                        "with --peers every runtime's intra-op threads")
    parser.add_argument("--memory", choices=("none", "base", "all"), default=None,
                        help="peak-memory probes: none, the base shape only (default), every shape")
    parser.add_argument("--device", type=_device, default=None, help="cpu (default) or cuda")
    parser.add_argument("--out", type=Path, default=None, help="directory for bench.csv and plots (default bench_out)")
    parser.add_argument("--peers", action="store_true",
                        help="one nn.GRU layer in ONNX Runtime and OpenVINO beside nn.GRU and FastGRU (same weights, "
                        "checked within 1e-5 first; make peers installs the runtimes)")
    parser.add_argument("--json", action="store_true", help="with --peers: print one JSON object, not the table")
    parser.set_defaults(func=_run_bench)


_NOT_WITH_PEERS = ("full", "steps", "batch", "hidden", "memory", "out")


def _run_bench(args: argparse.Namespace) -> int:
    from gru_lib import bench

    if args.peers:
        return _run_bench_peers(args)
    if args.json:
        raise GruLibError("--json: only with --peers (bench writes bench.csv into --out)")
    options = {k: v for k, v in vars(args).items() if k not in ("func", "command", "peers", "json")}
    options.update(shape=args.shape[-1] if args.shape else list(bench.BASE), memory=args.memory or "base",
                   backends=args.backends or ",".join(bench.BACKENDS), device=args.device or "cpu",
                   out=args.out if args.out is not None else Path("bench_out"))
    return bench.bench_command(**options)


def _peer_names(text: str | None) -> list[str]:
    """``--backends`` with ``--peers``: the peers to time (nn.GRU, the reference, always among them)."""
    from gru_lib.peers import PEERS

    names = [n.strip() for n in (text or ",".join(PEERS)).split(",") if n.strip()]
    unknown = [n for n in names if n not in PEERS]
    if unknown:
        raise GruLibError(f"--backends {','.join(unknown)}: not a peer (with --peers choose from {', '.join(PEERS)})")
    return ["nn.GRU"] + [n for n in dict.fromkeys(names) if n != "nn.GRU"]


def _check_peer_memory(shape: Shape) -> None:
    """Refuse a ``--shape`` whose tensors (forward + backward: :func:`gru_lib.peers.shape_bytes`) would not
    fit in the memory available, naming the shape and the bytes, before anything is allocated."""
    from gru_lib.peers import memory_shortfall

    short = memory_shortfall(shape, "fwd+bwd")
    if short is not None:
        needed, available = short
        raise GruLibError(f"--shape {shape.batch},{shape.steps},{shape.input_size},{shape.hidden}: needs at least "
                          f"{needed:,} bytes ({needed / 2**30:,.1f} GiB) for inputs, outputs and weights, "
                          f"{available:,} bytes ({available / 2**30:,.1f} GiB) available")


def _run_bench_peers(args: argparse.Namespace) -> int:
    """``bench --peers``: check and time the peers (:mod:`gru_lib.peers`); a table, or JSON with ``--json``."""
    import torch

    from gru_lib.bench import Shape
    from gru_lib.peers import DEFAULT_BACKWARD, DEFAULT_FORWARD, bench_peers, format_peer_table, peer_versions

    given = [f"--{name}" for name in _NOT_WITH_PEERS if getattr(args, name) not in (None, False)]
    if given:
        verb = "does" if len(given) == 1 else "do"
        raise GruLibError(f"--peers: {', '.join(given)} {verb} not apply (the peers time the shapes of --shape)")
    if args.device not in (None, "cpu"):
        raise GruLibError(f"--peers: --device {args.device}: the peers run on the CPU only")
    bad = [s for s in args.shape or [] if len(s) != 4]
    if bad:
        raise GruLibError(f"--shape {','.join(map(str, bad[0]))}: expected B,T,D,H (4 integers)")
    for shape in args.shape or []:
        _check_peer_memory(Shape(*shape))
    names = _peer_names(args.backends)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    shapes = [Shape(*s) for s in args.shape] if args.shape else None
    rows, notes = bench_peers(shapes or DEFAULT_FORWARD, shapes or DEFAULT_BACKWARD, names, args.repeats)
    versions = peer_versions()
    if args.json:
        print(json.dumps({"threads": torch.get_num_threads(), "versions": versions, "machine": isa.describe(),
                          "rows": rows, "notes": notes}))
        return 0
    print(isa.describe())
    print(f"threads={torch.get_num_threads()} " + " ".join(f"{k}={v}" for k, v in versions.items()))
    print(f"medians of {args.repeats} interleaved rounds; x fastest: median / the fastest peer's, per shape and mode")
    print(format_peer_table(rows))
    for note in notes:
        print(f"note: {note}")
    return 0


# ------------------------------------------------------------------------------------------------------ export


def _add_export_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export", help="export the classifier as ONNX and check it in ONNX Runtime",
        description="Write the classifier as an ONNX file (inputs ids (B, T) and lengths (B,), output logits; "
        "B and T dynamic; padding exact) and print the largest difference of its logits from PyTorch's on a "
        "sample. Without --checkpoint: the classifier that ships with gru_lib. Needs onnx, onnxscript and "
        "onnxruntime (make peers).",
    )
    parser.add_argument("--checkpoint", default=None, metavar="PATH",
                        help="a train --out directory, its checkpoint.pt, or a shipped model file "
                        "(default: the shipped model)")
    parser.add_argument("--out", required=True, metavar="FILE", help="the ONNX file to write")
    parser.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    parser.add_argument("--data", default=None, metavar="DIR",
                        help="check on the AG News test split in DIR (default: random token sequences)")
    parser.add_argument("--check-rows", type=positive_int, default=512, metavar="N",
                        help="how many texts the check compares (default: 512)")
    parser.set_defaults(func=_run_export)


def _load_any_classifier(path: str | None) -> tuple[Any, Any, Any]:
    """(model, vocab, train config) of a run directory, a checkpoint file or a shipped model file."""
    from gru_lib.checkpoint import load_checkpoint
    from gru_lib.evaluate import classifier_from_record, load_classifier
    from gru_lib.shipped import MAGIC, load_shipped

    given = Path(path).expanduser() if path is not None else None
    if given is not None and not given.exists():
        raise CheckpointError(f"--checkpoint {path}: no such file or directory")
    if given is not None and given.is_dir():
        return load_classifier(given)[:3]
    if given is None or given.read_bytes()[: len(MAGIC)] == MAGIC:
        return load_shipped(given)[:3]
    state = load_checkpoint(given, map_location="cpu")
    model, vocab, config = classifier_from_record(state, state["model"], given)
    return model.eval(), vocab, config


def _export_reads(args: argparse.Namespace) -> list[Path]:
    """The files ``export`` reads: the model (``--checkpoint``, a run directory's checkpoint.pt, or the shipped
    model) and, with ``--data``, the test split."""
    from gru_lib.checkpoint import checkpoint_path
    from gru_lib.shipped import DEFAULT_MODEL

    given = Path(args.checkpoint).expanduser() if args.checkpoint is not None else DEFAULT_MODEL
    reads = [checkpoint_path(given) if given.is_dir() else given]
    if args.data is not None:
        reads.append(Path(args.data).expanduser() / "ag_news" / "test.csv")
    return reads


def _same_file(a: Path, b: Path) -> bool:
    """``a`` and ``b`` name one file: the same path once symlinks and ``..`` are resolved, or the same inode."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    with contextlib.suppress(OSError):
        return os.path.samefile(a, b)
    return False


def file_in_the_way(parent: Path) -> Path | None:
    """The nearest existing part of ``parent`` (itself or an ancestor) when it is not a directory: the file that
    keeps an output below it from being written; None when that part is a directory, or nothing exists."""
    existing = next((part for part in (parent, *parent.parents) if part.exists()), None)
    return existing if existing is not None and not existing.is_dir() else None


def _missing_parent(flag: str, value: str, parent: Path) -> GruLibError:
    """The error for an output whose directory is not there: its nearest existing part is a file, or the
    directory does not exist."""
    blocker = file_in_the_way(parent)
    if blocker is not None:
        return GruLibError(f"{flag} {value}: {blocker} is not a directory")
    return GruLibError(f"{flag} {value}: the directory {parent} does not exist")


def _check_export_out(out: str, force: bool, reads: Sequence[Path] = ()) -> Path:
    """``--out``: a file path whose directory exists, never one of the files the command ``reads`` (not even
    with ``--force``: the model may be its only copy); an existing file only with ``--force``."""
    path = Path(out).expanduser()
    if not out.strip() or path.is_dir():
        raise GruLibError(f"--out {out}: is a directory or empty (name the .onnx file to write)")
    for read in reads:
        if _same_file(path, read):
            raise GruLibError(f"--out {out}: is {read}, which export reads (choose another --out; an input is "
                              "never overwritten)")
    if path.exists() and not force:
        raise GruLibError(f"--out {out}: exists (pass --force to overwrite it)")
    if not path.parent.is_dir():
        raise _missing_parent("--out", out, path.parent)
    return path


def _export_sample(args: argparse.Namespace, vocab: Any, config: Any) -> tuple[list[list[int]], str]:
    """The token ids the check compares: the test split's first --check-rows texts (--data), else random
    sequences (seeded) of every length from 1 to max_len, so batches mix lengths and padding."""
    import torch

    from gru_lib.text import numericalize

    if args.data is not None:
        rows = _rows(args, "test")[: args.check_rows]
        texts = [f"{row.title} {row.description}" for row in rows]
        return numericalize(texts, vocab, max_len=config.max_len, clean=config.clean_text), "test rows"
    gen = torch.Generator().manual_seed(0)
    lengths = [1 + i % config.max_len for i in range(args.check_rows)]
    return [torch.randint(2, len(vocab), (n,), generator=gen).tolist() for n in lengths], "random texts"


def _run_export(args: argparse.Namespace) -> int:
    out = _check_export_out(args.out, args.force, _export_reads(args))
    from gru_lib.export import REQUIRED, check_onnx_classifier, export_classifier, missing_packages

    if missing_packages():
        raise GruLibError(f"export needs {', '.join(REQUIRED)} ({', '.join(missing_packages())} not installed): "
                          f"make peers, or pip install {' '.join(REQUIRED)}")
    model, vocab, config = _load_any_classifier(args.checkpoint)
    ids, what = _export_sample(args, vocab, config)
    with atomic_output(out) as tmp:  # checked before it replaces --out; an interrupt leaves --out as it was
        export_classifier(model, tmp)
        check = check_onnx_classifier(tmp, model, ids, pad_index=vocab.pad_index)
    print(f"wrote {out} ({out.stat().st_size:,} bytes); ONNX Runtime vs PyTorch on {check['rows']:,} {what}: "
          f"max |logit difference| {check['max_abs_diff']:.3g}, same prediction on "
          f"{check['same_predictions']:,}")
    return 0


def bench_classifier_args(argv: Sequence[str] | None = None, description: str | None = None) -> argparse.Namespace:
    """The arguments of ``python -m gru_lib.bench_classifier`` (see that module)."""
    parser = OneLineParser(prog="python -m gru_lib.bench_classifier", description=description,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--seeds", type=seed_value, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=thread_count, default=2)
    parser.add_argument("train_args", nargs=argparse.REMAINDER)
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="python -m gru_lib", description="The GRU book's library: train, evaluate, predict, bench."
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_data_parser, _add_train_parser, _add_evaluate_parser, _add_predict_parser, _add_bench_parser,
                _add_export_parser):
        add(subparsers)
    return parser


def _end_quietly() -> int:
    """The reader of stdout went away (``predict ... | head -1``): stop without a word, status 128 + SIGPIPE.
    stdout is pointed at /dev/null so that the interpreter's last flush does not complain."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass  # stdout is not a real file (captured): nothing will flush into the broken pipe
    return 128 + getattr(signal, "SIGPIPE", 13)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        isa.selected()  # a GRU_LIB_ISA this CPU cannot run is refused before any work starts
        with terminate_as_interrupt():  # SIGTERM cleans up like Ctrl-C: no temporary or half-written file
            return int(args.func(args) or 0)
    except GruLibError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return _end_quietly()
    except OSError as error:  # the one place OS errors become words (gru_lib.errors.describe_os_error)
        print(f"error: {describe_os_error(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as stop:  # Ctrl-C, or SIGTERM (gru_lib.atomic.Terminated): 128 + the signal
        signum = getattr(stop, "signum", signal.SIGINT)
        print("error: interrupted" if signum == signal.SIGINT else f"error: stopped by {signal.Signals(signum).name}",
              file=sys.stderr)
        return 128 + signum
