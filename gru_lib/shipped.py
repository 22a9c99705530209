"""The classifier that ships with the book: stored without pickle, loaded without unpickling.

``gru_lib/shipped_model/news_gru.bin`` is a small trained :class:`~gru_lib.models.NewsClassifier` that
``python -m gru_lib predict`` uses when no ``--model`` is given and that the book's "Try it" page runs in the
browser. ``make model`` rebuilds it: a ``python -m gru_lib train`` run, then :func:`export_run`. The file::

    bytes 0..7     b"GRUBOOK1"                            the format's magic
    bytes 8..15    n, a little-endian uint64               the length of the header
    n bytes        the header: UTF-8 JSON                   format, version, classes, model_config,
                                                            train_config, vocab, record, tensors
    the rest       the tensors, raw little-endian float32, one after another in the order of "tensors"
                   ({"name", "shape", "offset", "nbytes"}, offsets counted from the end of the header)

``record`` says how the model was made: the training command, the data (file checksums, which rows) and the
accuracy measured on the test split with these very weights; ``news_gru.json`` beside the file is the same
record, for people. Reading trusts nothing: sizes, offsets, shapes, names and values are checked against the
model the header describes, and anything wrong is one :class:`~gru_lib.errors.CheckpointError` naming the file.

The browser page loads the same header and bytes from ``book/_static/try_it/model.js`` (:func:`model_js`: a
``<script>`` file, so the page works from ``file://`` where ``fetch`` does not), and the tables that Python's
``html.unescape`` uses from ``html_entities.js`` (:func:`entities_js`), so its tokenizer is Python's exactly.
"""

from __future__ import annotations

import base64
import hashlib
import html
import html.entities
import json
import math
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gru_lib.atomic import atomic_write
from gru_lib.config import TrainConfig
from gru_lib.errors import CheckpointError, GruLibError
from gru_lib.models import NewsClassifier
from gru_lib.text import Vocab

__all__ = [
    "FORMAT", "VERSION", "SHIPPED_DIR", "DEFAULT_MODEL", "MAX_FILE_BYTES", "write_shipped", "read_shipped",
    "load_shipped", "predict_topics", "export_run", "model_js", "entities_js", "write_site_files",
]

FORMAT = "gru_lib.shipped"
VERSION = 1
MAGIC = b"GRUBOOK1"
SHIPPED_DIR = Path(__file__).with_name("shipped_model")
DEFAULT_MODEL = SHIPPED_DIR / "news_gru.bin"
MAX_FILE_BYTES = 16 << 20  # the shipped model is kept under 3 MB; anything this large is not one
MAX_HEADER_BYTES = 4 << 20
_DTYPE = "<f4"
_HEADER_KEYS = ("classes", "model_config", "train_config", "vocab", "record", "tensors")


# ------------------------------------------------------------------------------------------------ write, read


def write_shipped(path: str | Path, model: NewsClassifier, vocab: Vocab, config: TrainConfig,
                  record: dict[str, Any]) -> None:
    """Write ``model`` (its ``state_dict`` as float32), its vocabulary, configuration and ``record``, atomically
    (:func:`gru_lib.atomic.atomic_write`: ``path`` holds the previous file or the new one, never part of it)."""
    from gru_lib.data import CLASSES

    tensors, chunks, offset = [], [], 0
    for name, value in model.state_dict().items():
        data = value.detach().cpu().to(torch.float32).numpy().astype(_DTYPE).tobytes()
        tensors.append({"name": name, "shape": list(value.shape), "offset": offset, "nbytes": len(data)})
        chunks.append(data)
        offset += len(data)
    header = {"format": FORMAT, "version": VERSION, "classes": list(CLASSES), "model_config": model.config(),
              "train_config": config.to_dict(), "vocab": vocab.to_dict(), "record": record, "tensors": tensors}
    blob = json.dumps(header, ensure_ascii=False, sort_keys=True).encode("utf-8")
    atomic_write(path, MAGIC + struct.pack("<Q", len(blob)) + blob + b"".join(chunks))


def _split_file(path: Path) -> tuple[dict[str, Any], bytes]:
    """The header (parsed JSON) and the tensor bytes of a shipped file, after checking its framing."""
    if not path.is_file():
        raise CheckpointError(f"{path}: shipped model not found")
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise CheckpointError(f"{path}: {size:,} bytes, more than the {MAX_FILE_BYTES:,} a shipped model may have")
    raw = path.read_bytes()
    if raw[:8] != MAGIC or len(raw) < 16:
        raise CheckpointError(f"{path}: not a shipped gru_lib model (no {MAGIC.decode()} marker)")
    (length,) = struct.unpack("<Q", raw[8:16])
    if length > min(MAX_HEADER_BYTES, len(raw) - 16):
        raise CheckpointError(f"{path}: header of {length:,} bytes does not fit the file (truncated or corrupt)")
    try:
        header = json.loads(raw[16 : 16 + length].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path}: the header is not valid JSON ({error})") from None
    except RecursionError:
        raise CheckpointError(f"{path}: the header's JSON is nested too deeply to be a gru_lib model") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a {FORMAT} file")
    if header.get("version") != VERSION:
        raise CheckpointError(f"{path}: version {header.get('version')!r}, but this gru_lib reads version {VERSION}")
    missing = [key for key in _HEADER_KEYS if key not in header]
    if missing:
        raise CheckpointError(f"{path}: the header lacks {', '.join(missing)}")
    _check_classes(path, header["classes"])
    return header, raw[16 + length :]


def _check_classes(path: Path, classes: Any) -> None:
    """The header's ``classes`` name the head's outputs in order; every reader labels with them, so they must
    be the classes the model was trained on: AG News's, in :data:`gru_lib.data.CLASSES`'s order."""
    from gru_lib.data import CLASSES

    if classes != list(CLASSES):
        shown = str(classes)[:120]
        raise CheckpointError(f"{path}: the header's classes {shown} are not AG News's {list(CLASSES)} "
                              "in that order")


def _tensor_arrays(path: Path, entries: Any, data: bytes) -> dict[str, np.ndarray]:
    """The arrays the header's ``tensors`` entries describe: contiguous, in bounds, finite float32."""
    if not isinstance(entries, list):
        raise CheckpointError(f"{path}: 'tensors' must be a list")
    arrays, offset = {}, 0
    for entry in entries:
        try:
            name, shape, start, nbytes = entry["name"], entry["shape"], entry["offset"], entry["nbytes"]
            valid = isinstance(name, str) and all(type(d) is int and d >= 0 for d in shape)
            count = math.prod(shape) if valid else -1  # exact: a product of int64s could wrap around
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path}: malformed tensor entry {str(entry)[:80]}") from None
        if not valid or start != offset or nbytes != 4 * count or start + nbytes > len(data) or name in arrays:
            raise CheckpointError(f"{path}: tensor {name!r} has a bad shape, offset or size (truncated or corrupt)")
        array = np.frombuffer(data, dtype=_DTYPE, count=count, offset=start).astype(np.float32).reshape(shape)
        if not np.isfinite(array).all():
            raise CheckpointError(f"{path}: tensor {name!r} holds NaN or infinite values")
        arrays[name] = array
        offset += nbytes
    if offset != len(data):
        raise CheckpointError(f"{path}: {len(data) - offset:,} bytes after the last tensor (corrupt file)")
    return arrays


def read_shipped(path: str | Path = DEFAULT_MODEL) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The header and the arrays (name -> float32 array) of a shipped model file, validated (no pickle)."""
    path = Path(path)
    header, data = _split_file(path)
    return header, _tensor_arrays(path, header["tensors"], data)


def load_shipped(path: str | Path | None = None, *, device: torch.device | str = "cpu"
                 ) -> tuple[NewsClassifier, Vocab, TrainConfig, dict[str, Any]]:
    """The shipped classifier (default: :data:`DEFAULT_MODEL`) as ``load_classifier`` returns a trained one:
    (model in eval mode, vocabulary, training configuration, header)."""
    from gru_lib.evaluate import classifier_from_record

    path = Path(DEFAULT_MODEL if path is None else path)
    header, arrays = read_shipped(path)
    weights = {name: torch.from_numpy(array) for name, array in arrays.items()}
    model, vocab, config = classifier_from_record(header, weights, path)
    return model.to(device).eval(), vocab, config, header


def predict_topics(texts: Sequence[str], path: str | Path | None = None) -> list[dict[str, Any]]:
    """For each text: ``{"text", "topic", "probability", "probabilities"}`` from the shipped classifier
    (the softmax of its logits; ``topic`` the most probable class), as ``predict --json`` prints them."""
    from gru_lib.evaluate import predict_logits
    from gru_lib.text import numericalize

    model, vocab, config, header = load_shipped(path)
    ids = numericalize(texts, vocab, max_len=config.max_len, clean=config.clean_text)
    probs = predict_logits(model, ids, pad_index=vocab.pad_index).softmax(dim=1)
    classes = header["classes"]
    return [{"text": text, "topic": classes[int(row.argmax())], "probability": float(row.max()),
             "probabilities": dict(zip(classes, row.tolist()))} for text, row in zip(texts, probs)]


# ------------------------------------------------------------------------------------- export (make model)


def _file_facts(path: Path, split: str, rows_in_file: int, rows_read: int, held_out: int = 0) -> dict[str, Any]:
    """What a data file was: its checksums, whether it is the complete official split, which rows were used
    (the first ``rows_read``, less ``held_out`` of them kept for validation)."""
    from gru_lib.data import AG_NEWS_MD5

    raw = path.read_bytes()
    md5 = hashlib.md5(raw).hexdigest()
    which = f"rows 1 to {rows_read:,} of the file, in its order"
    if held_out:
        which += f", less {held_out:,} held out for validation (TrainConfig.val_fraction, seeded)"
    return {"file": f"ag_news/{split}.csv", "sha256": hashlib.sha256(raw).hexdigest(), "md5": md5,
            "complete_official_split": md5 == AG_NEWS_MD5[split], "rows_in_file": rows_in_file,
            "rows_used": rows_read - held_out, "which_rows": which}


def _train_command(config: TrainConfig, train_rows: int | None) -> str:
    """The ``python -m gru_lib train`` command line that gives ``config``: every setting that differs from
    the defaults, as its flag (:func:`gru_lib.cli.config_flags`)."""
    from gru_lib.cli import config_flags

    values, defaults = config.to_dict(), TrainConfig().to_dict()
    words = ["python -m gru_lib train --out RUN_DIR"] + ([f"--train-rows {train_rows}"] if train_rows else [])
    for name, (flag, _, kind) in config_flags().items():
        if values[name] != defaults[name]:
            words.append((flag if values[name] else "--no-" + flag[2:]) if kind is bool else f"{flag} {values[name]}")
    return " ".join(words)


def export_run(run_dir: str | Path, out: str | Path = DEFAULT_MODEL, *, data_dir: str | Path | None = None,
               site_dir: str | Path | None = None) -> dict[str, Any]:
    """Ship the classifier of a ``train --out`` directory: measure its test accuracy, write ``out`` and
    ``out.json`` (the record) and, with ``site_dir``, the page's ``model.js`` and ``html_entities.js``.
    Returns the record. The rows are read from ``data_dir`` (default: where ``train`` reads them)."""
    from gru_lib.data import CLASSES, default_data_dir, load_ag_news
    from gru_lib.evaluate import evaluate_model, load_classifier
    from gru_lib.metrics import classification_report
    from gru_lib.prepare import encode_examples

    run_dir, out = Path(run_dir), Path(out)
    model, vocab, config, _ = load_classifier(run_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    held_out = metrics.get("validation_rows", 0)
    rows_read = metrics["train_rows"] + held_out
    data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
    rows_in_file = len(load_ag_news("train", data_dir))
    test_rows = load_ag_news("test", data_dir)
    cm, _ = evaluate_model(model, encode_examples(test_rows, vocab, config), pad_index=vocab.pad_index)
    report = classification_report(cm, CLASSES)
    record = {
        "command": _train_command(config, rows_read if rows_read < rows_in_file else None),
        "rebuild": "make model",
        "train_data": _file_facts(data_dir / "ag_news" / "train.csv", "train", rows_in_file, rows_read, held_out),
        "test_data": _file_facts(data_dir / "ag_news" / "test.csv", "test", len(test_rows), len(test_rows)),
        "test_accuracy": report["accuracy"], "test_macro_f1": report["macro_f1"],
        "weights": "float32, as trained (no quantisation)",
        "parameters": sum(p.numel() for p in model.parameters()), "vocab_size": len(vocab),
        "torch_version": torch.__version__.split("+")[0],
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    write_shipped(out, model, vocab, config, record)
    shipped, _, _, _ = load_shipped(out)  # what was written reads back to the same weights
    for name, value in model.state_dict().items():
        if not torch.equal(shipped.state_dict()[name], value.float()):
            raise GruLibError(f"{out}: tensor {name} does not read back equal to the trained one")
    facts = {"file": out.name, "bytes": out.stat().st_size, "sha256": hashlib.sha256(out.read_bytes()).hexdigest()}
    atomic_write(out.with_suffix(".json"), json.dumps({**facts, **record}, indent=2) + "\n")
    if site_dir is not None:
        write_site_files(site_dir, out)
    return record


# -------------------------------------------------------------------------------------- the page's script files

_GENERATED = "// Generated by gru_lib.shipped.{} from gru_lib/shipped_model/news_gru.bin (`make model`); do not edit.\n"


def model_js(path: str | Path = DEFAULT_MODEL) -> str:
    """``model.js``: ``window.GRU_BOOK_MODEL`` = the file's header plus ``weights_base64``, its tensor bytes
    (little-endian float32, offsets as in the header), so a ``<script src>`` loads it, from ``file://`` too."""
    path = Path(path)
    header, data = _split_file(path)
    _tensor_arrays(path, header["tensors"], data)
    payload = {**header, "weights_base64": base64.b64encode(data).decode("ascii")}
    return _GENERATED.format("model_js") + "window.GRU_BOOK_MODEL = " + json.dumps(payload, sort_keys=True) + ";\n"


def entities_js() -> str:
    """``html_entities.js``: the tables of Python's ``html.unescape`` (HTML5's named references, and what
    invalid numeric ones become), so the page's ``normalize`` decodes entities exactly as :mod:`gru_lib.text`."""
    tables = {"named": html.entities.html5,
              "invalid_charrefs": {str(k): v for k, v in html._invalid_charrefs.items()},  # type: ignore[attr-defined]
              "invalid_codepoints": sorted(html._invalid_codepoints)}  # type: ignore[attr-defined]
    return (_GENERATED.format("entities_js").replace(" from gru_lib/shipped_model/news_gru.bin", " from Python's html")
            + "window.GRU_BOOK_HTML_ENTITIES = " + json.dumps(tables, sort_keys=True) + ";\n")


def write_site_files(site_dir: str | Path, path: str | Path = DEFAULT_MODEL) -> None:
    """Write ``model.js`` and ``html_entities.js`` into ``site_dir`` (the page's folder, book/_static/try_it),
    each atomically."""
    site_dir = Path(site_dir)
    site_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(site_dir / "model.js", model_js(path), encoding="ascii")
    atomic_write(site_dir / "html_entities.js", entities_js(), encoding="ascii")
