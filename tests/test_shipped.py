"""The shipped classifier (gru_lib.shipped): read without unpickling, equal to the PyTorch model it came from,
recorded, in sync with the page's script files, refusing damaged files with one line naming them."""

from __future__ import annotations

import base64
import hashlib
import json
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from gru_lib import shipped
from gru_lib.cli import build_parser, config_from_args, main
from gru_lib.config import TrainConfig
from gru_lib.errors import CheckpointError
from gru_lib.models import NewsClassifier
from gru_lib.text import Vocab, numericalize

ROOT = Path(__file__).resolve().parents[1]
SITE_FILES = ROOT / "book" / "_static" / "try_it"
HEADLINES = ["Striker scores twice as champions win the cup final",
             "Central bank raises interest rates to fight inflation",
             "Intel's new chip: 2x faster; \"quot;wow#39;\" &lt;b&gt;AMD&lt;/b&gt; café", ""]


def _forbid_unpickling(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make every way of unpickling fail the test (torch.load, pickle, numpy's pickled arrays)."""
    calls: list[str] = []

    def refuse(name: str):
        def call(*args, **kwargs):
            calls.append(name)
            raise AssertionError(f"{name} was called")
        return call

    class Unpickler(pickle.Unpickler):  # still a class: modules imported later may subclass it
        def load(self):
            return refuse("pickle.Unpickler.load")()

    for owner, name in [(torch, "load"), (pickle, "load"), (pickle, "loads"), (np, "load")]:
        monkeypatch.setattr(owner, name, refuse(f"{owner.__name__}.{name}"))
    monkeypatch.setattr(pickle, "Unpickler", Unpickler)
    return calls


@pytest.fixture
def tiny(tmp_path: Path) -> tuple[Path, NewsClassifier, Vocab, TrainConfig]:
    """A small random classifier (bidirectional, every pooling) written in the shipped format."""
    torch.manual_seed(0)
    vocab = Vocab(["<pad>", "<unk>", "the", "cup", "bank", "chip", "'", "s", "."])
    config = TrainConfig(embed_dim=6, hidden_size=5, bidirectional=True, pooling="mean+max+last+emb", max_len=7)
    model = NewsClassifier(len(vocab), config.model).eval()
    path = tmp_path / "tiny.bin"
    shipped.write_shipped(path, model, vocab, config, {"note": "test"})
    return path, model, vocab, config


def test_the_shipped_model_loads_without_unpickling(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _forbid_unpickling(monkeypatch)
    model, vocab, config, header = shipped.load_shipped()
    results = shipped.predict_topics(HEADLINES)
    assert not calls
    assert isinstance(model, NewsClassifier) and not model.training
    assert [r["topic"] for r in results[:2]] == ["Sports", "Business"]
    for r in results:
        assert abs(sum(r["probabilities"].values()) - 1) < 1e-5 and r["topic"] in header["classes"]


def test_a_written_model_reads_back_to_the_same_predictions(tiny, monkeypatch: pytest.MonkeyPatch) -> None:
    path, model, vocab, config = tiny
    _forbid_unpickling(monkeypatch)
    loaded, loaded_vocab, loaded_config, header = shipped.load_shipped(path)
    assert loaded_vocab == vocab and loaded_config == config and header["record"] == {"note": "test"}
    for name, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name
    ids = numericalize(["the cup", "the bank's chip . the cup the", "nothing known"], vocab, max_len=config.max_len)
    for seq in ids:
        x, n = torch.tensor([seq]), torch.tensor([len(seq)])
        assert torch.equal(loaded(x, n), model(x, n))


def test_the_record_says_how_the_model_was_made() -> None:
    header, arrays = shipped.read_shipped()
    record = header["record"]
    beside = json.loads(shipped.DEFAULT_MODEL.with_suffix(".json").read_text(encoding="utf-8"))
    data = shipped.DEFAULT_MODEL.read_bytes()
    assert beside == {"file": shipped.DEFAULT_MODEL.name, "bytes": len(data),
                      "sha256": hashlib.sha256(data).hexdigest(), **record}
    assert len(data) <= 3_000_000, "the shipped model must stay under 3 MB"
    assert record["parameters"] == sum(a.size for a in arrays.values())
    assert record["vocab_size"] == len(header["vocab"]["itos"])
    assert 0.7 < record["test_accuracy"] <= 1 and record["test_data"]["rows_used"] > 0
    train = record["train_data"]
    assert 0 < train["rows_used"] <= train["rows_in_file"] and len(train["sha256"]) == 64
    # The recorded command gives exactly the recorded configuration.
    words = record["command"].split()
    assert words[:3] == ["python", "-m", "gru_lib"]
    args = build_parser().parse_args(words[3:])
    assert config_from_args(args).to_dict() == header["train_config"]
    assert (args.train_rows or train["rows_in_file"]) >= train["rows_used"]


def test_the_page_scripts_are_generated_from_the_shipped_model() -> None:
    """model.js and html_entities.js are what gru_lib.shipped writes now (`make model` regenerates them)."""
    assert (SITE_FILES / "model.js").read_text(encoding="ascii") == shipped.model_js()
    assert (SITE_FILES / "html_entities.js").read_text(encoding="ascii") == shipped.entities_js()
    payload = json.loads((SITE_FILES / "model.js").read_text(encoding="ascii").split(" = ", 1)[1].rstrip(";\n"))
    header, arrays = shipped.read_shipped()
    assert payload["model_config"] == header["model_config"] and payload["vocab"] == header["vocab"]
    raw = base64.b64decode(payload["weights_base64"])
    for entry in payload["tensors"]:
        values = np.frombuffer(raw, "<f4", entry["nbytes"] // 4, entry["offset"]).reshape(entry["shape"])
        assert np.array_equal(values, arrays[entry["name"]])


def test_predict_uses_the_shipped_model_without_training(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["predict", "--json", *HEADLINES[:2]]) == 0
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    expected = shipped.predict_topics(HEADLINES[:2])
    assert [p["topic"] for p in printed] == [e["topic"] for e in expected]
    for p, e in zip(printed, expected):
        assert p["probabilities"] == pytest.approx(e["probabilities"], abs=1e-6)


def test_predict_prints_one_line_per_text(capsys: pytest.CaptureFixture[str]) -> None:
    """A text with a line break, a tab or a Unicode line separator is still one line of the tab-separated
    output, its breaks written as Python escapes them."""
    texts = ["Stocks rally\nas oil falls", "Team wins\tthe cup", "Probe lands\u2028on a comet", "back\\slash"]
    assert main(["predict", *texts]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(texts)
    shown = [line.split("\t", 2)[2] for line in lines]
    assert shown == ["Stocks rally\\nas oil falls", "Team wins\\tthe cup", "Probe lands\\u2028on a comet",
                     "back\\\\slash"]


def _damage(path: Path, how: str) -> None:
    raw = bytearray(path.read_bytes())
    (length,) = struct.unpack("<Q", raw[8:16])
    header = json.loads(raw[16 : 16 + length])
    if how == "truncated":
        del raw[-7:]
    elif how == "magic":
        raw[:8] = b"PK\x03\x04xxxx"
    elif how == "header length":
        raw[8:16] = struct.pack("<Q", len(raw))
    elif how == "not json":
        raw[16] = ord("#")
    elif how == "trailing bytes":
        raw += b"\0\0\0\0"
    elif how == "deeply nested header":
        blob = b'{"a":' * 100_000 + b"1" + b"}" * 100_000
        raw = bytearray(raw[:8] + struct.pack("<Q", len(blob)) + blob + raw[16 + length :])
    elif how in ("version", "shape", "nan", "classes reordered", "classes renamed", "padding_idx outside the embedding",
                 "float max_len", "shape product wraps int64"):
        if how == "version":
            header["version"] = 99
        elif how == "classes reordered":  # the labels of two outputs swapped: a wrong answer if trusted
            header["classes"] = header["classes"][1::-1] + header["classes"][2:]
        elif how == "classes renamed":
            header["classes"] = ["A", "B", "C", "D"]
        elif how == "padding_idx outside the embedding":
            header["model_config"]["padding_idx"] = 10**9
        elif how == "float max_len":
            header["train_config"]["max_len"] = 3.5
        elif how == "shape product wraps int64":
            header["tensors"][0]["shape"], header["tensors"][0]["nbytes"] = [2**32, 2**32], 0
        elif how == "shape":
            header["tensors"][0]["shape"] = [header["tensors"][0]["shape"][0] - 1, 1]
        blob = json.dumps(header).encode()
        raw = bytearray(raw[:8] + struct.pack("<Q", len(blob)) + blob + raw[16 + length :])
        if how == "nan":
            raw[-4:] = struct.pack("<f", float("nan"))
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("how", ["truncated", "magic", "header length", "not json", "trailing bytes", "version",
                                 "shape", "nan", "classes reordered", "classes renamed", "deeply nested header",
                                 "padding_idx outside the embedding", "float max_len", "shape product wraps int64"])
def test_a_damaged_file_is_refused_with_one_line(tiny, how: str, capsys: pytest.CaptureFixture[str]) -> None:
    path = tiny[0]
    _damage(path, how)
    with pytest.raises(CheckpointError) as error:
        shipped.load_shipped(path)
    message = str(error.value)
    assert str(path) in message and "\n" not in message
    assert main(["predict", "--model", str(path), "a headline"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and str(path) in err


def test_an_oversized_or_missing_file_is_refused(tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    with big.open("wb") as f:
        f.truncate(shipped.MAX_FILE_BYTES + 1)  # sparse: nothing is written
    with pytest.raises(CheckpointError, match="more than"):
        shipped.load_shipped(big)
    with pytest.raises(CheckpointError, match="not found"):
        shipped.load_shipped(tmp_path / "absent.bin")


@pytest.mark.parametrize("text", ["&nbsp;", "<br>", "<p>&nbsp;</p>", " \t "])
def test_text_without_words_is_refused_not_classified(text: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Markup or entities alone clean to nothing, as whitespace does: no confident topic for an empty text."""
    assert main(["predict", "Stocks rally as oil falls", text]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1 and "TEXT 2" in captured.err
