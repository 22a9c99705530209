"""`python -m gru_lib` misused as a careless (or adversarial) user would: every failure is one line on stderr,
exit status 2, no traceback, naming the argument or file and what is wrong; no file the user did not name is
overwritten; loaded checkpoints are validated; a closed pipe ends the output quietly."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from synthetic_news import train_with_cli, write_ag_news

from gru_lib.checkpoint import LOCK_NAME, check_run_dir, run_dir_lock
from gru_lib.cli import main
from gru_lib.distributed import DistContext
from gru_lib.errors import CheckpointError, GruLibError, describe_os_error
from gru_lib.train_state import TrainState

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--epochs", "1", "--embed-dim", "8", "--hidden-size", "8", "--batch-size", "8", "--no-progress",
        "--threads", "1", "--embedding-init", "random"]


@pytest.fixture(autouse=True)
def _single_process(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_ag_news(tmp_path_factory.mktemp("data"), 32, 8)


@pytest.fixture(scope="module")
def trained(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_with_cli(data_dir, tmp_path_factory.mktemp("run"), TINY)


def _refused(capsys: pytest.CaptureFixture[str], argv: list[str], *words: str) -> str:
    """Run ``main(argv)``: exit status 2 (returned, or argparse's SystemExit), one line on stderr holding
    every one of ``words``, no traceback."""
    try:
        status = main(argv)
    except SystemExit as stop:
        status = stop.code
    err = capsys.readouterr().err
    assert status == 2, (status, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


# ----------------------------------------------------------------------- 1. nothing the user did not name is lost


def test_out_with_the_users_files_is_refused_and_left_alone(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "config.json").write_text("my own settings\n")
    (out / "metrics.json").write_text("my own numbers\n")
    _refused(capsys, ["train", "--data", str(data_dir), "--out", str(out), *TINY],
             str(out), "not empty", "config.json")
    assert (out / "config.json").read_text() == "my own settings\n"
    assert (out / "metrics.json").read_text() == "my own numbers\n"
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "metrics.json"]


def test_out_empty_string_is_refused_not_the_current_directory(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config.json").write_text("mine\n")
    _refused(capsys, ["train", "--data", str(data_dir), "--out", "", *TINY], "--out ''", "empty path")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]
    assert (tmp_path / "config.json").read_text() == "mine\n"


def test_out_an_existing_file_is_refused(data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "notes.txt"
    target.write_text("keep me\n")
    _refused(capsys, ["train", "--data", str(data_dir), "--out", str(target), *TINY], str(target),
             "not a directory")
    assert target.read_text() == "keep me\n"


def test_a_finished_run_needs_resume_and_scratch_files_do_not_count(trained: Path, tmp_path: Path) -> None:
    with pytest.raises(GruLibError, match="--resume"):
        check_run_dir(trained, resume=False)
    assert check_run_dir(trained, resume=True) == trained
    scratch = tmp_path / "left"
    scratch.mkdir()
    (scratch / LOCK_NAME).write_text("123\n")  # what a killed run leaves behind
    (scratch / ".checkpoint.pt.99.tmp").write_bytes(b"half")
    assert check_run_dir(scratch, resume=False) == scratch


def test_a_second_run_on_a_locked_directory_fails_at_once(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "busy"
    with run_dir_lock(out):
        _refused(capsys, ["train", "--data", str(data_dir), "--out", str(out), *TINY], str(out), "another run")
        assert not (out / "checkpoint.pt").exists()
    assert not (out / LOCK_NAME).exists()  # released and removed
    with run_dir_lock(out), pytest.raises(GruLibError, match="another run"):
        with run_dir_lock(out):
            pass


def test_unwritable_out_is_refused_before_training(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    _refused(capsys, ["train", "--data", str(data_dir), "--out", str(blocker / "run"), *TINY],
             f"--out {blocker / 'run'}: cannot write", "not a directory")


def test_permission_denied_on_out_says_so_before_training(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    real_open = os.open

    def refuse_lock(path: object, *args: object, **kwargs: object) -> int:
        if str(path).endswith(LOCK_NAME):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_open(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", refuse_lock)
    out = tmp_path / "ro"
    _refused(capsys, ["train", "--data", str(data_dir), "--out", str(out), *TINY], f"--out {out}: cannot write",
             "permission denied")
    assert not (out / "checkpoint.pt").exists()


def test_a_full_disk_while_saving_says_no_space_left(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    restore_threads: None,
) -> None:
    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # what torch.save raises on a full disk

    monkeypatch.setattr(torch, "save", full)
    out = tmp_path / "full"
    _refused(capsys, ["train", "--data", str(data_dir), "--out", str(out), *TINY],
             str(out / "checkpoint.pt"), "no space left on device")
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]


# --------------------------------------------------------------------------- 2. every failure is one line, exit 2


BAD_FLAGS = [
    (["train", "--out", "X", "--threads", "0"], ["--threads", "must be >= 1"]),
    (["train", "--out", "X", "--threads", "-3"], ["--threads", "must be >= 1"]),
    (["train", "--out", "X", "--threads", "two"], ["--threads", "integer"]),
    (["train", "--out", "X", "--device", "meta"], ["--device", "'meta'", "cpu or cuda"]),
    (["train", "--out", "X", "--device", "foo"], ["--device", "'foo'", "not a torch device"]),
    (["train", "--out", "X", "--seed", str(2**32)], ["--seed", "0..4294967295"]),
    (["train", "--out", "X", "--seed", "-1"], ["--seed", "0..4294967295"]),
    (["evaluate", "--model", "X", "--batch-size", "0"], ["--batch-size", "must be >= 1"]),
    (["predict", "--model", "X", "--device", "meta", "hello"], ["--device", "'meta'"]),
    (["bench", "--device", "foo"], ["--device", "'foo'"]),
    (["bench", "--threads", "0"], ["--threads", "must be >= 1"]),
    (["train", "--out", "X", "--no-such-flag"], ["unrecognized arguments", "--no-such-flag"]),
]


@pytest.mark.parametrize("argv,words", BAD_FLAGS, ids=[" ".join(a[:1] + a[3:5]) for a, _ in BAD_FLAGS])
def test_bad_flags_give_one_line(argv: list[str], words: list[str], tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    argv = [str(tmp_path / "x") if a == "X" else a for a in argv]
    _refused(capsys, argv, *words)
    assert not (tmp_path / "x").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_says_so_not_corrupted(trained: Path, data_dir: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    _refused(capsys, ["evaluate", "--model", str(trained), "--data", str(data_dir), "--device", "cuda"],
             "CUDA is not available")
    from gru_lib.evaluate import load_classifier

    with pytest.raises(GruLibError, match="CUDA is not available") as info:
        load_classifier(trained, device="cuda")
    assert "corrupt" not in str(info.value)


@pytest.mark.parametrize("code,words", [(errno.ENOSPC, "no space left on device"), (errno.EACCES, "permission denied"),
                                        (errno.EPERM, "permission denied"), (errno.EIO, os.strerror(errno.EIO))])
def test_os_errors_are_worded_in_one_place(code: int, words: str) -> None:
    line = describe_os_error(OSError(code, os.strerror(code), "/some/file"))
    assert line.startswith(f"/some/file: {words}") and "\n" not in line
    assert describe_os_error(OSError(code, os.strerror(code))).startswith(words)


@pytest.mark.subprocess
def test_a_closed_pipe_ends_predict_quietly(trained: Path) -> None:
    texts = [f"markets rally on earnings number {i}" for i in range(3000)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "gru_lib", "predict", "--model", str(trained), *texts],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
    assert process.stdout is not None and process.stderr is not None
    first = process.stdout.readline()  # like `| head -1`: one line, then the reader goes away
    process.stdout.close()
    err = process.stderr.read()
    status = process.wait(timeout=120)
    assert first.count("\t") == 2, first
    assert status in (0, 141), (status, err)
    assert err == "", err


# -------------------------------------------------------------------------------- 3. loaded checkpoints validated


def _spoiled(trained: Path, tmp_path: Path, spoil: object) -> Path:
    bad = tmp_path / "bad"
    bad.mkdir()
    state = torch.load(trained / "checkpoint.pt", weights_only=True)
    spoil(state)  # type: ignore[operator]
    torch.save(state, bad / "checkpoint.pt")
    return bad


def _nan(state: dict) -> None:
    state["model"]["head.weight"][0, 0] = float("nan")


def _inf(state: dict) -> None:
    state["model"]["embedding.weight"][3, 1] = float("inf")


def _integers(state: dict) -> None:
    state["model"]["head.weight"] = state["model"]["head.weight"].round().to(torch.int32)


def _classes(k: int) -> object:
    def spoil(state: dict) -> None:
        state["model_config"]["num_classes"] = k
        for name in ("head.weight", "head.bias"):
            rows = state["model"][name]
            state["model"][name] = torch.cat([rows, rows[:1]]) if k > len(rows) else rows[:k]
    return spoil


def _absurd(size: int) -> object:
    def spoil(state: dict) -> None:
        state["model_config"]["hidden_size"] = size  # terabytes, were it allocated
    return spoil


SPOILS = {"nan": (_nan, "NaN or infinite"), "inf": (_inf, "NaN or infinite"),
          "integers": (_integers, "floating dtype"), "3 classes": (_classes(3), "3 classes"),
          "5 classes": (_classes(5), "5 classes"), "absurd size": (_absurd(10**6), "do not match"),
          "overflowing size": (_absurd(10**9), "incompatible configuration")}


@pytest.mark.parametrize("how", list(SPOILS))
def test_spoiled_checkpoints_are_refused_naming_the_file(
    how: str, trained: Path, data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spoil, words = SPOILS[how]
    bad = _spoiled(trained, tmp_path, spoil)
    path = str(bad / "checkpoint.pt")
    _refused(capsys, ["evaluate", "--model", str(bad), "--data", str(data_dir)], path, words)
    _refused(capsys, ["predict", "--model", str(bad), "markets rally"], path, words)


def test_a_negative_stored_position_is_refused(trained: Path) -> None:
    state = torch.load(trained / "checkpoint.pt", weights_only=True)
    training = dict(state["training"], epoch=-1)
    with pytest.raises(CheckpointError, match="negative position"):
        TrainState.from_checkpoint(training, DistContext(), trained / "checkpoint.pt")


def test_an_optimizer_state_of_the_wrong_shape_is_refused_on_resume(
    trained: Path, data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], restore_threads: None
) -> None:
    def shrink(state: dict) -> None:
        moments = state["training"]["optimizer"]["state"][0]
        moments["exp_avg"] = moments["exp_avg"][:1]

    bad = _spoiled(trained, tmp_path, shrink)
    _refused(capsys, ["train", "--data", str(data_dir), "--out", str(bad), "--resume", *TINY],
             str(bad / "checkpoint.pt"), "optimizer exp_avg", "shape")


@pytest.mark.parametrize("kind", ["directory", "symlink loop"])
def test_a_checkpoint_that_cannot_be_read_is_not_called_missing_or_corrupted(
    kind: str, data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    path = run / "checkpoint.pt"
    if kind == "directory":
        path.mkdir()
    else:
        path.symlink_to(path)
    line = _refused(capsys, ["evaluate", "--model", str(run), "--data", str(data_dir)], str(path),
                    "is a directory" if kind == "directory" else "symbolic links")
    assert "not found" not in line and "corrupt" not in line


# ---------------------------------------------------------------------------------------------- 4. predict input


@pytest.mark.parametrize("texts", [[""], ["stocks rise", "   \t "]])
def test_predict_refuses_empty_text(texts: list[str], trained: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _refused(capsys, ["predict", "--model", str(trained), *texts], f"TEXT {len(texts)}", "empty")
    assert capsys.readouterr().out == ""


# ------------------------------------------------------------------------------------------ 5. the CSV reader


GOOD = '"1","World title","a world description"\n"2","Sports title","a sports description"\n'


def _csv(tmp_path: Path, text: str, name: str = "train.csv") -> Path:
    path = tmp_path / "ag_news" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode("utf-8"))
    return path


def test_a_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    from gru_lib.data import read_ag_news_csv

    rows = read_ag_news_csv(_csv(tmp_path, "\ufeff" + GOOD))
    assert [(r.label, r.title) for r in rows] == [(0, "World title"), (1, "Sports title")]


def test_an_unclosed_quote_is_reported_where_it_opens(tmp_path: Path) -> None:
    from gru_lib.data import DataError, read_ag_news_csv

    path = _csv(tmp_path, GOOD + '"3","never closed,"x"\n"4","a","b"\n"4","c","d"\n')
    with pytest.raises(DataError, match=r"train\.csv, line 3: malformed CSV"):
        read_ag_news_csv(path)
    path = _csv(tmp_path, GOOD + '"3","never closed\n"4","a","b"\n')
    with pytest.raises(DataError, match=r"train\.csv, line 3: malformed CSV .*stopped at line 4"):
        read_ag_news_csv(path)


def test_a_nul_byte_is_refused_naming_its_line(tmp_path: Path) -> None:
    from gru_lib.data import DataError, read_ag_news_csv

    with pytest.raises(DataError, match=r"train\.csv, line 2: a NUL byte"):
        read_ag_news_csv(_csv(tmp_path, '"1","a","b"\n"2","c\x00d","e"\n'))


def test_long_fields_up_to_the_stated_maximum(tmp_path: Path) -> None:
    import csv

    from gru_lib.data import MAX_FIELD_CHARS, DataError, read_ag_news_csv

    limit = csv.field_size_limit()
    long = "w " * 100_000  # 200,000 characters: over the csv module's default limit of 131,072
    assert len(read_ag_news_csv(_csv(tmp_path, GOOD + f'"3","t","{long}"\n'))[2].description) == len(long)
    with pytest.raises(DataError, match=f"line 3: a field longer than {MAX_FIELD_CHARS:,} characters"):
        read_ag_news_csv(_csv(tmp_path, GOOD + f'"3","t","{"x" * (MAX_FIELD_CHARS + 1)}"\n'))
    assert csv.field_size_limit() == limit  # the process-wide limit is put back


def test_data_refuses_a_missing_split_and_a_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _csv(tmp_path, GOOD, "test.csv")
    _refused(capsys, ["data", "--data-dir", str(tmp_path)], str(tmp_path / "ag_news" / "train.csv"), "missing",
             "--download")
    (tmp_path / "ag_news" / "train.csv").mkdir()
    _refused(capsys, ["data", "--data-dir", str(tmp_path)], str(tmp_path / "ag_news" / "train.csv"), "is a directory")


@pytest.mark.parametrize("url,words", [("not a url", "expected http://"), ("http://[::1", "Invalid IPv6 URL")])
def test_a_malformed_mirror_address_is_one_line(url: str, words: str, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRU_LIB_AG_NEWS_URL", url)
    _refused(capsys, ["data", "--data-dir", str(tmp_path), "--download"], "GRU_LIB_AG_NEWS_URL", repr(url), words)
    assert not (tmp_path / "ag_news").exists() or not any((tmp_path / "ag_news").iterdir())


def test_resume_on_other_rows_with_the_same_steps_per_epoch_is_refused(
    trained: Path, data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], restore_threads: None
) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    other = tmp_path / "other"
    shutil.copytree(data_dir, other)
    train_csv = other / "ag_news" / "train.csv"
    lines = train_csv.read_text(encoding="utf-8").splitlines(keepends=True)
    train_csv.write_text("".join(lines[::-1]), encoding="utf-8")  # same rows, same count, other order
    _refused(capsys, ["train", "--data", str(other), "--out", str(run), "--resume", *TINY],
             str(run / "checkpoint.pt"), "other training rows")
    assert main(["train", "--data", str(data_dir), "--out", str(run), "--resume", *TINY]) == 0


@pytest.mark.subprocess
@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_like_sigterm(tmp_path: Path) -> None:
    import signal
    import time

    from gru_lib.checkpoint import load_checkpoint

    data = write_ag_news(tmp_path / "data", 4000, 16)  # 500 steps per epoch: Ctrl-C lands inside epoch 2
    out = tmp_path / "run"
    argv = [sys.executable, "-m", "gru_lib", "train", "--data", str(data), "--out", str(out), *TINY,
            "--epochs", "3", "--max-len", "12"]  # no --checkpoint-every: checkpoints at epoch ends only
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
    deadline = time.monotonic() + 120
    while not (out / "checkpoint.pt").exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "no checkpoint after 120 s"
        time.sleep(0.01)
    time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGINT, err
    assert "stopped by SIGINT" in err and "continue with --resume" in err and "Traceback" not in err, err
    stopped = load_checkpoint(out / "checkpoint.pt", require_training=True)["training"]
    assert not stopped["complete"] and stopped["step"] >= 500
    resumed = subprocess.run([*argv[:8], "--resume", "--threads", "1", "--no-progress"], capture_output=True,
                             text=True, cwd=ROOT, env=env, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert load_checkpoint(out / "checkpoint.pt", require_training=True)["training"]["step"] == 1500


@pytest.mark.parametrize("part", ["body", "headers"])
def test_a_trickling_mirror_hits_the_overall_deadline(tmp_path: Path, part: str) -> None:
    """A byte every 0.1 s keeps each read quick, so only the whole download's deadline ends it: in the body
    (read1 returns what has arrived) and in the headers (a watchdog shuts the connection)."""
    import threading
    import time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from gru_lib.data import DataError, ensure_ag_news

    class Trickle(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the http.server name)
            if part == "body":
                self.send_response(200)
                self.send_header("Content-Length", "1000")
                self.end_headers()
            else:
                self.wfile.write(b"HTTP/1.1 200 OK\r\n")  # then a header line that never ends
            for _ in range(300):  # 30 s, far past the 1 s deadline
                try:
                    self.wfile.write(b"x")
                    self.wfile.flush()
                except OSError:
                    return
                time.sleep(0.1)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Trickle)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    started = time.monotonic()
    try:
        with pytest.raises(DataError, match=r"took longer than 1 s .*nothing was kept"):
            ensure_ag_news(tmp_path, url_base=f"http://127.0.0.1:{server.server_address[1]}", splits=("test",),
                           timeout=5, deadline=1.0, progress=False)
    finally:
        server.shutdown()
        server.server_close()
    assert time.monotonic() - started < 10
    assert not list((tmp_path / "ag_news").iterdir())


def test_data_files_that_cannot_be_read_or_written_say_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from gru_lib import data
    from gru_lib.data import DataError, read_ag_news_csv

    path = _csv(tmp_path, GOOD)

    def denied(self: Path) -> bytes:
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))

    with monkeypatch.context() as patch:
        patch.setattr(Path, "read_bytes", denied)
        with pytest.raises(DataError, match=r"train\.csv: cannot read \(permission denied\)"):
            read_ag_news_csv(path)

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(data, "_download", full)
    with pytest.raises(DataError, match=r"test\.csv: cannot write \(no space left on device\)"):
        data.ensure_ag_news(tmp_path / "empty", splits=("test",), progress=False)


@pytest.mark.parametrize("value,words", [("sse9", ["GRU_LIB_ISA='sse9'", "expected one of portable, avx2, avx512"]),
                                         ("AVX3", ["GRU_LIB_ISA='avx3'"])])
def test_an_unknown_instruction_set_is_refused_in_one_line(monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str], value: str,
                                                             words: list[str]) -> None:
    """GRU_LIB_ISA names a kernel path; a wrong one stops the command with one line, before any output."""
    monkeypatch.setenv("GRU_LIB_ISA", value)
    _refused(capsys, ["predict", "Stocks rally as oil prices fall"], *words)


def test_an_instruction_set_the_cpu_lacks_is_refused_in_one_line(monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from gru_lib import isa

    monkeypatch.setattr(isa, "cpu_levels", lambda: ("portable",))  # as on a CPU without AVX2
    monkeypatch.setenv("GRU_LIB_ISA", "avx2")
    _refused(capsys, ["predict", "Stocks rally as oil prices fall"], "GRU_LIB_ISA=avx2", "cannot run",
             "portable")


# ------------------------------------------------------------- 5. absurd values, odd bytes and texts that look like flags


HUGE_THREADS = ["99999999999999999999", str(10**12), "4097"]
THREAD_COMMANDS = [["train", "--out", "X"], ["bench"], ["bench", "--peers"]]


@pytest.mark.parametrize("value", HUGE_THREADS)
@pytest.mark.parametrize("command", THREAD_COMMANDS, ids=" ".join)
def test_an_absurd_thread_count_is_refused_on_every_command(command: list[str], value: str, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """torch.set_num_threads overflows on huge values: --threads is bounded (MAX_THREADS) while parsing."""
    argv = [str(tmp_path / "x") if a == "X" else a for a in command]
    _refused(capsys, [*argv, "--threads", value], "--threads", "<= 4096", value)
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("flags,words", [(["--threads", "99999999999999999999"], ["--threads", "<= 4096"]),
                                         (["--threads", "0"], ["--threads", ">= 1"]),
                                         (["--seeds", "-1"], ["--seeds", ">= 0"])])
def test_bench_classifier_refuses_absurd_flags_in_one_line(flags: list[str], words: list[str], tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    from gru_lib.cli import bench_classifier_args

    with pytest.raises(SystemExit) as stop:
        bench_classifier_args(["--out", str(tmp_path / "x"), *flags])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.count("\n") == 1 and err.startswith("error: "), err
    assert all(word in err for word in words), err


def test_a_thread_count_up_to_the_bound_is_accepted() -> None:
    from gru_lib.cli import MAX_THREADS, thread_count

    assert thread_count(str(MAX_THREADS)) == MAX_THREADS and thread_count("1") == 1


def test_a_peer_shape_too_large_for_memory_is_refused_before_allocating(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from gru_lib import peers

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("bench_peers ran: the shape was not checked before allocating")

    monkeypatch.setattr(peers, "bench_peers", never)
    line = _refused(capsys, ["bench", "--peers", "--shape", "100000,100000,128,256"],
                    "--shape 100000,100000,128,256", "bytes", "available")
    assert f"{peers.shape_bytes(peers.Shape(100000, 100000, 128, 256), 'fwd+bwd'):,}" in line


def test_peer_shapes_are_measured_against_the_memory_available(monkeypatch: pytest.MonkeyPatch) -> None:
    from gru_lib import peers

    shape = peers.Shape(64, 64, 128, 256)
    assert peers.shape_bytes(shape, "fwd+bwd") > peers.shape_bytes(shape) > 12 * 64 * 64 * (128 + 256)
    assert peers.memory_shortfall(shape) is None  # the default shape fits on any machine that runs the tests
    monkeypatch.setattr(peers, "available_memory", lambda: 1000)
    assert peers.memory_shortfall(shape) == (peers.shape_bytes(shape), 1000)
    monkeypatch.setattr(peers, "available_memory", lambda: None)  # unknown: not refused
    assert peers.memory_shortfall(shape) is None


def _predict(args: list[bytes | str], **env: str) -> subprocess.CompletedProcess[bytes]:
    """``python -m gru_lib predict ARGS`` (the shipped model) in a subprocess, stdout and stderr as bytes."""
    environ = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **env}
    return subprocess.run([sys.executable, "-m", "gru_lib", "predict", *args], capture_output=True, cwd=ROOT,
                          env=environ, timeout=300)


@pytest.mark.subprocess
@pytest.mark.parametrize("encoding", ["ascii", "latin-1"])
def test_predict_writes_to_a_stdout_that_cannot_encode_the_text(encoding: str) -> None:
    """Characters the stream cannot hold come out as backslash escapes: one line per text, exit 0."""
    done = _predict(["café au lait", "東京 stocks rally"], PYTHONIOENCODING=encoding)
    assert done.returncode == 0 and b"Traceback" not in done.stderr, done.stderr
    lines = done.stdout.decode(encoding).splitlines()
    assert len(lines) == 2 and all(line.count("\t") == 2 for line in lines), lines
    assert lines[1].endswith("\\u6771\\u4eac stocks rally"), lines


@pytest.mark.subprocess
def test_invalid_utf8_on_the_command_line_is_refused_naming_the_text() -> None:
    done = _predict([b"stocks rally", b"\xff\xfe"], PYTHONIOENCODING="utf-8")
    err = done.stderr.decode("utf-8", "backslashreplace")
    assert done.returncode == 2 and done.stdout == b"", (done.returncode, err)
    assert err.count("\n") == 1 and err.startswith("error: TEXT 2: not valid UTF-8 (byte 0xff"), err


def test_invalid_utf8_is_refused_before_loading_a_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _refused(capsys, ["predict", "--model", str(tmp_path / "none"), "ok", "caf\udce9"], "TEXT 2", "UTF-8", "0xe9")


@pytest.mark.parametrize("argv", [["predict", "-5%"], ["predict", "-drop"], ["predict", "stocks rally", "-5%"],
                                  ["predict", "--model", "M", "-5%"]])
def test_a_text_starting_with_a_dash_gets_the_hint_to_put_double_dash_before_it(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    line = _refused(capsys, argv, "put -- before it", repr(argv[-1]))
    assert "M" not in line.split(";")[1]  # the hint names the text, not the value of --model


def test_a_headline_starting_with_a_dash_is_classified_or_gets_the_hint(capsys: pytest.CaptureFixture[str]) -> None:
    """argparse reads "-5% drop in sales" (a space in it) as a TEXT on some Python versions and as a flag on
    others: classified, or refused with the hint; after -- it is always classified."""
    try:
        status = main(["predict", "-5% drop in sales"])
    except SystemExit as stop:
        status = stop.code
    out, err = capsys.readouterr()
    assert (status == 0 and out.endswith("\t-5% drop in sales\n")) or (status == 2 and "put -- before" in err), err
    assert main(["predict", "--", "-5% drop in sales"]) == 0
    assert capsys.readouterr().out.endswith("\t-5% drop in sales\n")
