"""Atomic writes (gru_lib.atomic): the target holds the old bytes or the new ones, never part of them; a failure,
Ctrl-C or SIGTERM leaves no temporary file; the temporary name is new and unique, never a user's file."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from gru_lib.atomic import Terminated, atomic_output, atomic_write, terminate_as_interrupt
from gru_lib.checkpoint import _own_scratch

ROOT = Path(__file__).resolve().parents[1]


def test_atomic_write_writes_bytes_and_text_with_the_usual_mode(tmp_path: Path) -> None:
    atomic_write(tmp_path / "a.bin", b"\x00\x01")
    atomic_write(tmp_path / "b.txt", "é\n")
    atomic_write(tmp_path / "c.js", "x", encoding="ascii")
    assert (tmp_path / "a.bin").read_bytes() == b"\x00\x01" and (tmp_path / "b.txt").read_bytes() == "é\n".encode()
    with open(tmp_path / "plain", "w"):
        pass
    expected = (tmp_path / "plain").stat().st_mode & 0o777  # what open() gives (0o666 less the umask), not 0o600
    assert {(tmp_path / name).stat().st_mode & 0o777 for name in ("a.bin", "b.txt", "c.js")} == {expected}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "b.txt", "c.js", "plain"]


def test_atomic_write_replaces_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    path.write_text("old")
    atomic_write(path, "new")
    assert path.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["a.json"]


@pytest.mark.parametrize("stop", [ValueError("boom"), KeyboardInterrupt(), SystemExit(3), Terminated()])
def test_a_failed_block_leaves_the_target_and_no_temporary_file(tmp_path: Path, stop: BaseException) -> None:
    path = tmp_path / "a.onnx"
    path.write_bytes(b"previous")
    (tmp_path / ".a.onnx.tmp").write_bytes(b"the user's own file")  # the old fixed temporary name
    with pytest.raises(type(stop)):
        with atomic_output(path) as tmp:
            tmp.write_bytes(b"half of the new")
            raise stop
    assert path.read_bytes() == b"previous"
    assert (tmp_path / ".a.onnx.tmp").read_bytes() == b"the user's own file"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".a.onnx.tmp", "a.onnx"]


def test_the_temporary_file_is_new_unique_and_beside_the_target(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pt"
    (tmp_path / ".checkpoint.pt.tmp").write_bytes(b"mine")
    with atomic_output(path) as first, atomic_output(path) as second:
        assert first != second and first.parent == second.parent == tmp_path
        assert first.name != ".checkpoint.pt.tmp" and first.exists() and first.stat().st_size == 0
        for tmp in (first, second):
            assert tmp.name.startswith(".checkpoint.pt.") and tmp.name.endswith(".tmp")
            assert _own_scratch(tmp.name)  # check_run_dir still takes it for this tool's scratch file
        first.write_bytes(b"1")
        second.write_bytes(b"2")
    assert path.read_bytes() == b"1"  # the outer block ends last and wins
    assert sorted(p.name for p in tmp_path.iterdir()) == [".checkpoint.pt.tmp", "checkpoint.pt"]
    assert (tmp_path / ".checkpoint.pt.tmp").read_bytes() == b"mine"


def test_an_os_error_without_a_file_name_names_the_target(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    with pytest.raises(OSError) as info:
        with atomic_output(path):
            raise OSError(errno.ENOSPC, "No space left on device")  # what torch.save raises: no file name
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(path)
    assert list(tmp_path.iterdir()) == []


def test_a_missing_directory_names_the_target(tmp_path: Path) -> None:
    path = tmp_path / "missing" / "a.json"
    with pytest.raises(FileNotFoundError) as info:
        atomic_write(path, "x")
    assert info.value.filename == str(path)


def test_terminate_as_interrupt_raises_in_the_block_and_restores_the_handler() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt) as info:
        with terminate_as_interrupt():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler runs at the next bytecode; never reached
    assert isinstance(info.value, Terminated) and info.value.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is before


def test_terminate_as_interrupt_outside_the_main_thread_changes_nothing() -> None:
    before, seen = signal.getsignal(signal.SIGTERM), []

    def work() -> None:
        with terminate_as_interrupt():
            seen.append(signal.getsignal(signal.SIGTERM))

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert seen == [before]


_SLOW_WRITER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from gru_lib.atomic import atomic_output, terminate_as_interrupt

    with terminate_as_interrupt():
        with atomic_output(Path(sys.argv[1])) as tmp:
            with open(tmp, "wb") as handle:
                handle.write(b"partial")
                handle.flush()
                time.sleep(60)
""")


@pytest.mark.subprocess
def test_sigterm_during_a_write_leaves_the_old_file_and_no_temporary_file(tmp_path: Path) -> None:
    path = tmp_path / "out.bin"
    path.write_bytes(b"previous")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen([sys.executable, "-c", _SLOW_WRITER, str(path)], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not any(p.name.startswith(".out.bin.") and p.stat().st_size for p in tmp_path.iterdir()):
        assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode != 0 and "gru_lib.atomic.Terminated" in err  # raised through the block
    assert path.read_bytes() == b"previous" and [p.name for p in tmp_path.iterdir()] == ["out.bin"]
