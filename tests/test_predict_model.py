"""`predict --model` names what it loads: the shipped model, a shipped model file, a `train --out` directory or
one of its checkpoint files; every other value is one line that names `--model` and what is wrong with it."""

from __future__ import annotations

from pathlib import Path

import pytest

from synthetic_news import train_with_cli, write_ag_news

from gru_lib.checkpoint import checkpoint_path
from gru_lib.cli import main
from gru_lib.shipped import DEFAULT_MODEL

TINY = ["--epochs", "1", "--embed-dim", "8", "--hidden-size", "8", "--batch-size", "8", "--no-progress",
        "--threads", "1", "--embedding-init", "random"]
TEXT = "Stocks rally as oil prices fall"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = write_ag_news(tmp_path_factory.mktemp("data"), 32, 8)
    return train_with_cli(data, tmp_path_factory.mktemp("run"), TINY)


def _predicts(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert len(out.splitlines()) == 1
    return out.split("\t")[0]


def test_every_kind_of_model_path_predicts(trained: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The run directory and its checkpoint file give the same topic; so do no --model and the shipped file."""
    by_dir = _predicts(capsys, ["predict", "--model", str(trained), TEXT])
    assert _predicts(capsys, ["predict", "--model", str(checkpoint_path(trained)), TEXT]) == by_dir
    assert _predicts(capsys, ["predict", "--model", str(DEFAULT_MODEL), TEXT]) == _predicts(capsys, ["predict", TEXT])


@pytest.mark.parametrize("given,words", [
    ("", ["--model: empty path"]),
    ("   ", ["--model: empty path"]),
    ("{tmp}/missing", ["--model", "missing: no such file or directory"]),
    ("{tmp}/missing/deeper", ["--model", "no such file or directory"]),
])
def test_a_bad_model_path_is_one_line_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture[str], given: str,
                                                words: list[str]) -> None:
    assert main(["predict", "--model", given.format(tmp=tmp_path), TEXT]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "checkpoint.pt" not in err
    for word in words:
        assert word in err, err


def test_a_file_that_is_neither_model_is_refused_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    junk = tmp_path / "notes.txt"
    junk.write_text("not a model\n")
    assert main(["predict", "--model", str(junk), TEXT]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(junk) in err


class _RunsACommand:
    """Unpickling this calls os.system: what a malicious checkpoint carries."""

    def __reduce__(self):  # noqa: ANN204
        import os

        return (os.system, ("echo this must never run",))


def test_a_malicious_checkpoint_is_refused_naming_what_was_blocked(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """The one line says which global the weights-only loader blocked, not torch's opening advice."""
    import torch

    run = tmp_path / "run"
    run.mkdir()
    torch.save({"format": "gru_lib.checkpoint", "payload": _RunsACommand()}, run / "checkpoint.pt")
    assert main(["predict", "--model", str(run), TEXT]) == 2
    captured = capsys.readouterr()
    assert "this must never run" not in captured.out
    assert captured.err.count("\n") == 1 and "system" in captured.err and "GLOBAL" in captured.err, captured.err
    assert "In PyTorch 2.6" not in captured.err
