"""The ablation study of chapter 5 (gru_lib.ablation), on tiny synthetic AG News: one epoch, tiny sizes."""

from __future__ import annotations

import json
import typing
from pathlib import Path

import pytest

pytest.importorskip("sklearn")

from gru_lib.ablation import VARIANTS, main, rows_sha256, summarize  # noqa: E402
from gru_lib.baseline import MODELS, NGRAMS  # noqa: E402
from gru_lib.data import NewsExample, load_ag_news  # noqa: E402
from synthetic_news import write_ag_news  # noqa: E402

TINY = ["--epochs", "1", "--embed-dim", "8", "--hidden-size", "4", "--max-len", "16", "--grid", "0.1", "1", "10"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_ag_news(tmp_path_factory.mktemp("ablation_data"), 160, 40)


@pytest.fixture(scope="module")
def study(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    import torch

    threads = torch.get_num_threads()
    out = tmp_path_factory.mktemp("ablation_out") / "results" / "ablation.json"
    try:
        assert main(["--out", str(out), "--data", str(data_dir), *TINY]) == 0
    finally:
        torch.set_num_threads(threads)
    return json.loads(out.read_text())


@pytest.mark.slow
def test_every_variant_and_seed_is_run(study: dict) -> None:
    assert [(r["variant"], r["seed"]) for r in study["runs"]] == [(v, s) for v in VARIANTS for s in (0, 1, 2)]
    for run in study["runs"]:
        assert 0.0 <= run["val_accuracy"] <= 1.0 and 0.0 <= run["test_accuracy"] <= 1.0
        assert run["parameters"] > 0 and run["seconds"] > 0 and run["epochs"] == 1
    assert set(study["summary"]) == set(VARIANTS)
    assert all(row["runs"] == 3 for row in study["summary"].values())


@pytest.mark.slow
def test_variants_differ_as_named(study: dict) -> None:
    first = {r["variant"]: r for r in study["runs"] if r["seed"] == 0}
    assert first["default"]["pooling"] == "mean+max+emb" and first["default"]["bidirectional"]
    assert first["gru_only"]["pooling"] == "mean+max" and first["emb_only"]["pooling"] == "emb"
    assert not first["uni_default"]["bidirectional"]
    # emb only: the GRU's weights are not counted; the default adds the GRU and a wider head
    assert first["emb_only"]["parameters"] < first["gru_only"]["parameters"] < first["default"]["parameters"]
    assert first["uni_default"]["parameters"] < first["default"]["parameters"]


@pytest.mark.slow
def test_every_baseline_is_tuned_on_validation(study: dict) -> None:
    assert [(b["ngrams"], b["model"]) for b in study["baselines"]] == [(n, m) for n in NGRAMS for m in MODELS]
    for row in study["baselines"]:
        by_c = {float(c): a for c, a in row["val_accuracy_by_C"].items()}
        assert sorted(by_c) == [0.1, 1.0, 10.0]
        assert row["val_accuracy"] == max(by_c.values()) == by_c[row["C"]]
        assert row["C"] == min(c for c, a in by_c.items() if a == row["val_accuracy"])
    words, pairs = study["baselines"][0], study["baselines"][2]
    assert words["features"] < pairs["features"]


@pytest.mark.slow
def test_rows_and_machine_are_recorded(study: dict, data_dir: Path) -> None:
    rows = study["rows"]
    assert rows["train_sha256"] == rows_sha256(load_ag_news("train", data_dir))
    assert rows["test_sha256"] == rows_sha256(load_ag_news("test", data_dir))
    assert (rows["train"], rows["fit"] + rows["validation"], rows["test"]) == (160, 160, 40)
    assert rows["split"] == {"val_fraction": 0.1, "seed": 0}
    machine = study["machine"]
    assert machine["threads"] == 1 and machine["processor"] and machine["torch"]
    assert study["command"].startswith("python -m gru_lib.ablation --out")


def test_fingerprint_sees_one_changed_row() -> None:
    rows = [NewsExample(0, "a", "b"), NewsExample(1, "c", "d")]
    assert rows_sha256(rows) != rows_sha256([rows[0], NewsExample(1, "c", "e")])
    assert rows_sha256(rows) != rows_sha256(rows[::-1])
    assert rows_sha256(rows) == rows_sha256(list(rows))


def test_summary_is_mean_and_sample_std() -> None:
    runs = [{"variant": "x", "val_accuracy": v, "test_accuracy": 0.5, "test_macro_f1": 0.5, "seconds": 2.0,
             "cpu_seconds": 1.0, "parameters": 10} for v in (0.7, 0.8, 0.9)]
    row = summarize(runs)["x"]
    assert row["val_accuracy_mean"] == pytest.approx(0.8) and row["val_accuracy_std"] == pytest.approx(0.1)
    assert row["test_accuracy_std"] == 0.0 and row["runs"] == 3


def _refused(capsys: pytest.CaptureFixture[str], argv: list[str], *words: str) -> None:
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: python -m gru_lib.ablation:"), err
    for word in words:
        assert word in err, err


@pytest.mark.slow
def test_an_existing_out_is_refused_unless_force(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], restore_threads: None
) -> None:
    out = tmp_path / "ablation.json"
    out.write_text("keep me\n")
    _refused(capsys, ["--out", str(out), "--data", str(data_dir), *TINY], str(out), "--force")
    assert out.read_text() == "keep me\n"
    argv = ["--out", str(out), "--data", str(data_dir), "--force", "--seeds", "0", "--variants", "emb_only", *TINY]
    assert main(argv) == 0
    assert [r["variant"] for r in json.loads(out.read_text())["runs"]] == ["emb_only"]


@pytest.mark.parametrize("flags, words", [
    ([], ["--out"]),
    (["--epochs", "0"], ["--epochs", "0"]),
    (["--val-fraction", "1.5"], ["--val-fraction", "1.5"]),
    (["--variants", "gru_only", "nope"], ["--variants", "nope"]),
    (["--grid", "1", "-1"], ["--grid"]),
    (["--seeds", "x"], ["--seeds", "x"]),
])
def test_bad_flags_are_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], words: list[str]
) -> None:
    out = [] if not flags else ["--out", str(tmp_path / "a.json")]
    _refused(capsys, [*out, *flags], *words)
    assert not (tmp_path / "a.json").exists()


def test_missing_data_is_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--out", str(tmp_path / "a.json"), "--data", str(tmp_path / "none"), *TINY]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: python -m gru_lib.ablation:"), err
    assert not (tmp_path / "a.json").exists()


@pytest.mark.slow
@pytest.mark.subprocess
def test_worker_processes_give_the_same_runs(data_dir: Path, tmp_path: Path, restore_threads: None) -> None:
    """``--jobs 2`` trains in spawned processes; each run seeds itself, so the results match ``--jobs 1``."""
    results = []
    for jobs in ("1", "2"):
        out = tmp_path / f"jobs{jobs}.json"
        argv = ["--out", str(out), "--data", str(data_dir), "--seeds", "0", "1", "--variants", "emb_only",
                "--jobs", jobs, *TINY]
        assert main(argv) == 0
        study = json.loads(out.read_text())
        assert study["complete"] and study["machine"]["jobs"] == int(jobs)
        results.append([(r["seed"], r["val_accuracy"], r["test_accuracy"]) for r in study["runs"]])
    assert results[0] == results[1]


def test_the_stored_study_ships_with_the_library_and_is_complete() -> None:
    from gru_lib.ablation import STORED_STUDY, VARIANTS, load_study

    assert STORED_STUDY.is_relative_to(Path(__import__("gru_lib").__file__).parent)
    study = load_study()
    assert study["complete"] and {r["variant"] for r in study["runs"]} == set(VARIANTS)
    assert len(study["baselines"]) == 4


def test_load_study_names_a_bad_file(tmp_path: Path) -> None:
    from gru_lib.ablation import load_study
    from gru_lib.errors import GruLibError

    with pytest.raises(GruLibError, match="missing.json: cannot read"):
        load_study(tmp_path / "missing.json")
    (tmp_path / "other.json").write_text('{"a": 1}')
    with pytest.raises(GruLibError, match="other.json: not an ablation study"):
        load_study(tmp_path / "other.json")


# --------------------------------------------------------------------------------- no data loss: --out, failures


@pytest.mark.parametrize("where, force, words", [
    ("dir", True, ["is a directory"]),
    ("dir", False, ["is a directory"]),
    ("file/a.json", True, ["file is not a directory"]),
    ("file/sub/a.json", False, ["file is not a directory"]),
])
def test_an_out_that_cannot_be_written_is_refused_before_training(
    where: str, force: bool, words: list[str], data_dir: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    import gru_lib.ablation

    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "keep.txt").write_text("mine")
    (tmp_path / "file").write_text("mine")
    monkeypatch.setattr(gru_lib.ablation, "run_study", lambda *a, **k: pytest.fail("the study started"))
    out = tmp_path / where
    _refused(capsys, ["--out", str(out), "--data", str(data_dir), *(["--force"] if force else []), *TINY],
             f"--out {out}", *words)
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == ["dir", "dir/keep.txt", "file"]
    assert (tmp_path / "file").read_text() == "mine"


def test_a_stopped_or_failed_study_leaves_no_temporary_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    import gru_lib.ablation

    out = tmp_path / "ablation.json"

    def stopped_study(*args: object, save: typing.Callable[[dict], None], **kwargs: object) -> dict:
        save({"runs": [], "baselines": [], "rows": {}, "complete": False})
        raise KeyboardInterrupt

    monkeypatch.setattr(gru_lib.ablation, "run_study", stopped_study)
    assert main(["--out", str(out), "--data", str(tmp_path), *TINY]) == 130
    assert capsys.readouterr().err.startswith(f"stopped: {out} holds the runs finished so far")
    assert json.loads(out.read_text())["complete"] is False and [p.name for p in tmp_path.iterdir()] == [out.name]
    before = out.read_bytes()

    def full_disk(src: object, dst: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(gru_lib.ablation, "run_study", lambda *a, save, **k: save({"runs": [1]}))
    monkeypatch.setattr("os.replace", full_disk)
    assert main(["--out", str(out), "--data", str(tmp_path), "--force", *TINY]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: python -m gru_lib.ablation:") and str(out) in err and err.count("\n") == 1, err
    assert out.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == [out.name]


@pytest.mark.parametrize("flags, words", [
    (["--seeds", "-1"], ["--seeds", ">= 0", "'-1'"]),
    (["--seeds", "0", str(2**32)], ["--seeds", "<= 4294967295"]),
    (["--grid", "nan"], ["--grid", "finite", "'nan'"]),
    (["--grid", "1", "inf"], ["--grid", "finite", "'inf'"]),
    (["--grid", "0"], ["--grid", "> 0", "'0'"]),
    (["--grid", "1", "-2.5"], ["--grid", "> 0", "'-2.5'"]),
    (["--jobs", "99999999999"], ["--jobs", "<= 256"]),
    (["--jobs", "0"], ["--jobs", ">= 1"]),
    (["--val-fraction", "2"], ["--val-fraction", "(0, 1)", "'2'"]),
    (["--val-fraction", "nan"], ["--val-fraction", "'nan'"]),
    (["--threads", "99999999999999999999"], ["--threads", "<= 4096"]),
    (["--threads", str(10**12)], ["--threads", "<= 4096"]),
])
def test_absurd_values_are_refused_before_anything_trains(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, flags: list[str],
    words: list[str]
) -> None:
    import gru_lib.ablation

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("the study started: the flags were not checked first")

    monkeypatch.setattr(gru_lib.ablation, "run_study", never)
    _refused(capsys, ["--out", str(tmp_path / "a.json"), *flags], *words)
    assert not (tmp_path / "a.json").exists()
