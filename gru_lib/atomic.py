"""Atomic writes: the one home of every file gru_lib writes whole (checkpoints, JSON records, ONNX files,
downloads, the shipped model and the page's script files).

:func:`atomic_output` yields a temporary file in the target's directory, made by :func:`tempfile.mkstemp` as
``.NAME.XXXXXXXX.tmp`` (a new, unique name, so never a file of the user's, not even one literally named
``.NAME.tmp``). When the block ends normally the file is fsync'ed, ``os.replace``\\ d onto the target (atomic on
POSIX) and the directory is fsync'ed: a reader, or a crash at any moment, sees the previous file or the new
one, both complete, never a torn one. When the block raises anything (an error, ``KeyboardInterrupt``,
``SystemExit``) the temporary file is removed and the target is left as it was. :func:`atomic_write` is the
same for bytes or text already in memory.

A process killed by a signal runs no cleanup, so the command lines wrap their work in
:func:`terminate_as_interrupt`: SIGTERM then raises :class:`Terminated` (a ``KeyboardInterrupt``), and the
``finally`` blocks remove their temporary files as they do on Ctrl-C.
"""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["atomic_output", "atomic_write", "fsync_dir", "terminate_as_interrupt", "Terminated"]


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C would raise ``KeyboardInterrupt`` (see :func:`terminate_as_interrupt`);
    ``signum`` is the signal, so a command line can exit with 128 + it."""

    signum: int = signal.SIGTERM


def fsync_dir(directory: str | Path) -> None:
    """Flush a directory's entries (a rename into it) to disk; a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _file_mode() -> int:
    """The mode ``open(path, "w")`` would give a new file (0o666 less the umask): mkstemp makes 0o600."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status", encoding="ascii") as status:  # Linux: read without changing it
            for line in status:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def _naming(error: OSError, path: Path, tmp: Path) -> OSError:
    """``error`` naming ``path`` where it is a plain file-system error that names no file or the temporary one
    (torch.save's ENOSPC names none), so the one-line error says which file could not be written. Others
    (a download's URLError, timeout or reset connection, an error naming another file) are left as they are."""
    if error.filename not in (None, "") and str(error.filename) != str(tmp):
        return error
    if error.errno is None or isinstance(error, (ConnectionError, TimeoutError)):
        return error
    if type(error) is not type(OSError(error.errno, "")):  # a subclass of its own (URLError, SSLError)
        return error
    return OSError(error.errno, error.strerror or str(error), str(path))


@contextlib.contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yield a new temporary file beside ``path`` for a writer that wants a file name (``torch.save``, an ONNX
    exporter, a download); swap it onto ``path`` when the block ends normally, remove it when the block raises
    anything, ``KeyboardInterrupt`` and ``SystemExit`` included (module docstring). ``path``'s directory must
    exist. An :class:`OSError` that names no file (or the temporary one) is raised naming ``path``."""
    path = Path(path)
    try:
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as error:  # it names a random candidate name: name the target instead
        raise OSError(error.errno, error.strerror or str(error), str(path)) from None
    tmp = Path(name)
    try:
        try:
            if hasattr(os, "fchmod"):  # not on Windows before Python 3.13
                os.fchmod(fd, _file_mode())
        finally:
            os.close(fd)
        yield tmp
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as error:
        tmp.unlink(missing_ok=True)
        raise _naming(error, path, tmp) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write(path: str | Path, data: bytes | str, *, encoding: str = "utf-8") -> None:
    """Write ``data`` (text is encoded with ``encoding``) to ``path`` atomically: ``path`` holds its previous
    content or all of ``data``, never part of it, and no temporary file is left behind (module docstring)."""
    raw = data.encode(encoding) if isinstance(data, str) else data
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as handle:
            handle.write(raw)


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """While the block runs, SIGTERM raises :class:`Terminated` (a ``KeyboardInterrupt``) in the main thread,
    so ``finally`` blocks and :func:`atomic_output` clean up as on Ctrl-C; the previous handler is restored
    afterwards. Outside the main thread (where handlers cannot be installed) it changes nothing. A handler
    installed inside the block (the trainer's graceful stop) takes precedence while it is installed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
