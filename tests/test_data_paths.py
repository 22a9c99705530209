"""A split's path that exists but is no CSV file (a directory, a symlink loop, a dangling link) is named for what
it is, in one line, by every command that reads the data; never "not found" with a hint to download."""

from __future__ import annotations

from pathlib import Path

import pytest

from gru_lib.cli import main
from gru_lib.data import ensure_ag_news


def _make(root: Path, how: str) -> Path:
    ag = root / "ag_news"
    ag.mkdir(parents=True)
    target = ag / "train.csv"
    if how == "directory":
        target.mkdir()
    elif how == "symlink loop":
        target.symlink_to(target)
    elif how == "dangling symlink":
        target.symlink_to(root / "nowhere.csv")
    return target


@pytest.mark.parametrize("how,words", [("directory", "is a directory"),
                                       ("symlink loop", "symbolic link that cannot be followed"),
                                       ("dangling symlink", "symbolic link that cannot be followed")])
@pytest.mark.parametrize("argv", [["data", "--data", "{root}"], ["data", "--download", "--data", "{root}"],
                                  ["train", "--data", "{root}", "--out", "{root}/run", "--no-progress"]])
def test_a_split_that_is_no_file_is_named_for_what_it_is(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                         how: str, words: str, argv: list[str]) -> None:
    target = _make(tmp_path, how)
    assert main([a.format(root=tmp_path) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(target) in err and words in err, err
    assert "not found" not in err and "download" not in err
    assert not (tmp_path / "run").exists()  # refused before any work


def test_the_library_refuses_it_too(tmp_path: Path) -> None:
    from gru_lib.errors import DataError

    _make(tmp_path, "directory")
    with pytest.raises(DataError, match="is a directory"):
        ensure_ag_news(tmp_path, download=True, splits=("train",))

