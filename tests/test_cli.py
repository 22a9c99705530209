"""`python -m gru_lib train | evaluate | predict`: help, an end-to-end run on a tiny CSV dataset the test writes,
and one-line errors (exit 2, no traceback) for bad directories and bad checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from synthetic_news import train_with_cli, write_ag_news

from gru_lib.cli import main
from gru_lib.data import CLASSES


SMALL = ["--epochs", "3", "--embed-dim", "16", "--hidden-size", "16", "--batch-size", "8", "--lr", "0.03",
         "--dropout", "0.1", "--no-progress", "--threads", "1"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_ag_news(tmp_path_factory.mktemp("data"), 64, 24)


@pytest.fixture(scope="module")
def trained(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_with_cli(data_dir, tmp_path_factory.mktemp("run"), SMALL)


@pytest.mark.parametrize("command,flag", [("train", "--epochs"), ("evaluate", "--json"), ("predict", "--model")])
def test_help(command: str, flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert flag in capsys.readouterr().out


def test_train_writes_its_outputs_and_prints_epochs(trained: Path) -> None:
    assert sorted(p.name for p in trained.iterdir()) == ["checkpoint.pt", "config.json", "metrics.json",
                                                          "vocab.json"]
    metrics = json.loads((trained / "metrics.json").read_text())
    assert metrics["train_rows"] == 64 and metrics["test_rows"] == 24
    assert [h["epoch"] for h in metrics["history"]] == [1, 2, 3]
    assert metrics["test"]["accuracy"] >= 0.9
    assert json.loads((trained / "config.json").read_text())["train"]["hidden_size"] == 16


@pytest.mark.slow
def test_train_with_a_validation_split_reports_both(data_dir: Path, tmp_path: Path, restore_threads: None) -> None:
    out = tmp_path / "val"
    assert main(["train", "--data", str(data_dir), "--out", str(out), *SMALL, "--epochs", "1",
                 "--val-fraction", "0.25"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["train_rows"], metrics["validation_rows"], metrics["test_rows"]) == (48, 16, 24)
    assert sum(map(sum, metrics["validation"]["confusion_matrix"])) == 16
    assert sum(map(sum, metrics["test"]["confusion_matrix"])) == 24
    assert metrics["history"][-1]["eval_accuracy"] == metrics["validation"]["accuracy"]
    assert json.loads((out / "config.json").read_text())["train"]["val_fraction"] == 0.25


def test_evaluate_json_is_one_object(trained: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", "--model", str(trained), "--data", str(data_dir), "--json"]) == 0
    out = capsys.readouterr().out
    assert len(out.strip().splitlines()) == 1
    result = json.loads(out)
    metrics = json.loads((trained / "metrics.json").read_text())
    assert result["accuracy"] == pytest.approx(metrics["test"]["accuracy"])
    assert result["macro_f1"] == pytest.approx(metrics["test"]["macro_f1"])
    assert result["rows"] == 24
    assert main(["evaluate", "--model", str(trained), "--data", str(data_dir)]) == 0
    assert "macro-F1" in capsys.readouterr().out


def test_predict_prints_topic_and_probability(trained: Path, capsys: pytest.CaptureFixture[str]) -> None:
    texts = ["the striker scored a goal in the match", "bank shares and market profit"]
    assert main(["predict", "--model", str(trained), *texts]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    topics = [line.split("\t") for line in lines]
    assert [t[0] for t in topics] == ["Sports", "Business"]
    assert all(0.25 < float(t[1]) <= 1.0 and t[2] == text for t, text in zip(topics, texts))
    assert all(t[0] in CLASSES for t in topics)


def _error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    return err


def test_bad_directories(tmp_path: Path, data_dir: Path, trained: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", "--model", str(tmp_path / "nope"), "--data", str(data_dir)]) == 2
    assert "nope: no such file or directory" in _error_line(capsys)  # missing: not "not a directory"
    assert main(["evaluate", "--model", str(tmp_path), "--data", str(data_dir)]) == 2
    assert "checkpoint.pt: checkpoint not found" in _error_line(capsys)
    assert main(["evaluate", "--model", str(trained), "--data", str(tmp_path / "missing")]) == 2
    assert "--data" in _error_line(capsys)
    assert main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "o"), *SMALL]) == 2
    assert "ag_news" in _error_line(capsys)
    assert main(["train", "--data", str(data_dir), "--out", str(trained), *SMALL]) == 2
    assert "--resume" in _error_line(capsys)


def _spoil(run: Path, tmp_path: Path, how: str) -> Path:
    bad = tmp_path / how
    bad.mkdir()
    data = (run / "checkpoint.pt").read_bytes()
    if how == "truncated":
        data = data[: len(data) // 3]
    elif how == "corrupted":
        data = bytes(b ^ 0x5A for b in data)
    (bad / "checkpoint.pt").write_bytes(data)
    if how == "incompatible":
        state = torch.load(bad / "checkpoint.pt", weights_only=True)
        state["model_config"]["hidden_size"] = 32
        torch.save(state, bad / "checkpoint.pt")
    return bad


@pytest.mark.parametrize("how,message", [("truncated", "truncated or corrupted"), ("corrupted", "corrupted"),
                                         ("incompatible", "do not match")])
def test_bad_checkpoints_give_one_line_errors(how: str, message: str, trained: Path, data_dir: Path,
                                              tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = _spoil(trained, tmp_path, how)
    for argv in (["evaluate", "--model", str(bad), "--data", str(data_dir)],
                 ["predict", "--model", str(bad), "some text"],
                 ["train", "--data", str(data_dir), "--out", str(bad), "--resume", *SMALL]):
        assert main(argv) == 2
        line = _error_line(capsys)
        assert str(bad / "checkpoint.pt") in line and message in line, line
