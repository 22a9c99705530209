"""Checkpoints: written atomically, read without unpickling arbitrary objects, validated with one-line errors.

A checkpoint is one ``torch.save`` file holding only tensors and plain types (dicts, lists, strings, numbers),
so :func:`load_checkpoint` reads it with ``torch.load(weights_only=True)``, which refuses anything else::

    format, version            "gru_lib.checkpoint", 1
    model                      the classifier's state_dict
    model_config               NewsClassifier's constructor arguments
    vocab                      Vocab.to_dict()
    train_config               TrainConfig as a dict
    training                   what an exact resume needs: epoch, batch_in_epoch (the sampler's position),
                               step, optimizer / scheduler / grad-scaler states, RNG states (as tensors),
                               the history so far and the running sums of the current epoch

Atomic write (:func:`gru_lib.atomic.atomic_output`): the bytes go to a new temporary file in the same
directory, are fsync'ed, and ``os.replace`` swaps it in (atomic on POSIX), then the directory is fsync'ed. A
kill at any moment leaves either the previous checkpoint or the new one, both complete, never a torn file.
Reading checks the zip archive's CRC-32 of every record, so corruption anywhere in the file, tensor data
included, is detected.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pickle
import random
import stat
import time
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gru_lib.atomic import atomic_output
from gru_lib.errors import CheckpointError, GruLibError, os_error_reason

try:
    import fcntl
except ImportError:  # not on Windows: runs there are not locked (see run_dir_lock)
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "CHECKPOINT_NAME",
    "FORMAT",
    "VERSION",
    "atomic_torch_save",
    "save_checkpoint",
    "load_checkpoint",
    "checkpoint_path",
    "check_run_dir",
    "run_dir_lock",
    "capture_rng_state",
    "restore_rng_state",
]

FORMAT = "gru_lib.checkpoint"
VERSION = 1
CHECKPOINT_NAME = "checkpoint.pt"
REQUIRED_KEYS: tuple[str, ...] = ("model", "model_config", "vocab", "train_config")
# Fault tests only: seconds to sleep between writing the temporary file and swapping it in.
_SLEEP_ENV = "GRU_LIB_CHECKPOINT_SLEEP"


def checkpoint_path(directory: str | Path) -> Path:
    """The latest checkpoint of a run directory (``--out`` of ``train``, ``--model`` of ``evaluate``)."""
    return Path(directory) / CHECKPOINT_NAME


LOCK_NAME = ".gru_lib.lock"


def _own_scratch(name: str) -> bool:
    """The lock file and the temporary files of atomic writes (``.NAME.XXXXXXXX.tmp``, :mod:`gru_lib.atomic`)."""
    return name == LOCK_NAME or (name.startswith(".") and name.endswith(".tmp"))


def check_run_dir(out: str | Path, *, resume: bool, flag: str = "--out") -> Path:
    """Refuse, before anything is written, a run directory whose files a run would overwrite.

    The contract: without ``resume`` the directory is new or holds nothing but this tool's own scratch files
    (its lock and temporary files); a directory this tool wrote holds its checkpoint (the format marker
    checked on loading), and continuing it takes ``resume``, which needs that checkpoint. So a user's own
    ``config.json`` or ``metrics.json`` is never overwritten. ``""`` (the current directory) and an existing
    non-directory are refused too. Raises :class:`GruLibError` naming ``flag`` and the directory."""
    if not str(out).strip():
        raise GruLibError(f"{flag} '': empty path (name a new or empty directory)")
    path = Path(out).expanduser()
    if path.exists() and not path.is_dir():
        raise GruLibError(f"{flag} {out}: exists and is not a directory")
    if resume or not path.exists():
        return path
    if checkpoint_path(path).exists():
        raise GruLibError(f"{flag} {out} already holds a checkpoint: pass --resume to continue it, "
                          "or choose another directory")
    others = sorted(name for name in os.listdir(path) if not _own_scratch(name))
    if others:
        shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
        raise GruLibError(f"{flag} {out}: directory is not empty ({shown}); train writes only into a new or "
                          "empty directory, or one it wrote with --resume")
    return path


@contextlib.contextmanager
def run_dir_lock(directory: str | Path, flag: str = "--out") -> Iterator[Path]:
    """Create ``directory`` and hold an advisory lock on its :data:`LOCK_NAME` while the block runs, so two
    runs never write into one directory; a second run fails at once with :class:`GruLibError` naming the
    directory. Creating the lock also proves the directory writable before any work is done: one that cannot
    be created or written is a :class:`GruLibError` saying why ("permission denied", "no space left on
    device"). The lock file is removed on release; a run that finds the lock file replaced after locking it
    (another run released and removed it meanwhile) retries. Where ``fcntl`` does not exist (Windows) the
    directory's writability is still checked but nothing is locked."""
    directory = Path(directory)
    lock = directory / LOCK_NAME
    try:
        directory.mkdir(parents=True, exist_ok=True)
        if fcntl is None:
            with open(lock, "w", encoding="utf-8"):  # still prove the directory writable
                pass
            lock.unlink()
    except OSError as error:
        raise GruLibError(f"{flag} {directory}: cannot write there ({os_error_reason(error)})") from None
    if fcntl is None:
        yield directory
        return
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise GruLibError(f"{flag} {directory}: cannot write there ({os_error_reason(error)})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            os.close(fd)
            if error.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            raise GruLibError(f"{flag} {directory}: another run is writing into this directory "
                              f"(it holds {lock}); wait for it or choose another directory") from None
        try:
            same = os.path.exists(lock) and os.stat(lock).st_ino == os.fstat(fd).st_ino
        except OSError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield directory
    finally:
        with contextlib.suppress(OSError):
            lock.unlink()
        os.close(fd)


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save(obj, path)`` so that ``path`` is never seen half-written (module docstring)."""
    with atomic_output(path) as tmp:  # torch.save's ENOSPC names no file: atomic_output names ``path``
        with open(tmp, "wb") as handle:
            try:
                torch.save(obj, handle)
            except RuntimeError as error:  # the zip writer's own words for a failed write
                if "inline_container" not in str(error):
                    raise
                raise _failed_write(tmp, error) from None
        delay = float(os.environ.get(_SLEEP_ENV, "0") or 0)
        if delay > 0:
            time.sleep(delay)


def _failed_write(tmp: Path, error: RuntimeError) -> OSError:
    """The OSError behind torch.save's "[enforce fail at inline_container.cc] unexpected pos" (a write that
    stopped short): ENOSPC when the file system has less than 1 MiB left, else EIO with torch's words."""
    try:
        usage = os.statvfs(tmp.parent)
        full = usage.f_bavail * usage.f_frsize < (1 << 20)
    except OSError:
        full = False
    if full:
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return OSError(errno.EIO, f"the write stopped short ({str(error).splitlines()[0][:120]})")


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Write ``state`` (the keys in the module docstring) atomically, stamped with format and version."""
    missing = [key for key in REQUIRED_KEYS if key not in state]
    if missing:
        raise ValueError(f"save_checkpoint: state lacks {', '.join(missing)}")
    atomic_torch_save({"format": FORMAT, "version": VERSION, **state}, path)


def _first_line(error: BaseException) -> str:
    text = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    # torch's weights-only refusal opens with advice and closes with a pointer to the documentation; the line
    # that names what was blocked ("WeightsUnpickler error: ...", "Trying to load unsupported GLOBAL ...") is
    # between them.
    advice = ("Weights only load failed", "Check the documentation of torch.load")
    named = [line for line in text if not line.startswith(advice)]
    line = (named or text or [""])[0].removeprefix("WeightsUnpickler error:").strip()
    line = line.split(" was not an allowed global")[0] or type(error).__name__
    return line if len(line) <= 160 else line[:157] + "..."


def _check_readable(path: Path) -> None:
    """Say what keeps ``path`` from being read as a checkpoint before reading it: missing, a directory, not a
    regular file, empty, unreadable (permissions, a symlink loop); never "corrupted" for these."""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise CheckpointError(f"{path}: checkpoint not found") from None
    except OSError as error:
        raise CheckpointError(f"{path}: cannot read ({os_error_reason(error)})") from None
    if stat.S_ISDIR(info.st_mode):
        raise CheckpointError(f"{path}: is a directory, not a checkpoint file")
    if not stat.S_ISREG(info.st_mode):
        raise CheckpointError(f"{path}: not a file")
    if info.st_size == 0:
        raise CheckpointError(f"{path}: empty file (truncated checkpoint)")
    try:
        with open(path, "rb"):
            pass
    except OSError as error:
        raise CheckpointError(f"{path}: cannot read ({os_error_reason(error)})") from None


def _verify_crc(path: Path) -> None:
    """``torch.save`` writes a zip archive with a CRC-32 per record, but ``torch.load`` never checks them, so a
    flipped bit in tensor data would load silently. Check them all (about 1 ms per MB)."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError, RuntimeError):
        return  # not a readable zip: torch.load says what is wrong (truncated, legacy format, garbage)
    if bad is not None:
        raise CheckpointError(f"{path}: corrupted checkpoint (checksum mismatch in record {bad})")


def load_checkpoint(path: str | Path, *, map_location: str | torch.device = "cpu",
                    require_training: bool = False) -> dict[str, Any]:
    """Read and validate a checkpoint with ``torch.load(weights_only=True)``.

    Raises :class:`CheckpointError` naming ``path`` and the problem: missing, not a file, truncated or
    corrupted, holding objects other than tensors and plain types, another format or version, missing keys
    (``require_training``: the resume state too) or keys of the wrong type."""
    path = Path(path)
    _check_readable(path)
    _verify_crc(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. pickle-protocol notes on foreign files: the error says it all
            state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(
            f"{path}: refused by the weights-only loader, corrupted or not a gru_lib checkpoint "
            f"({_first_line(error)})"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, KeyError, IndexError) as error:
        raise CheckpointError(f"{path}: truncated or corrupted checkpoint ({_first_line(error)})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a gru_lib checkpoint (no '{FORMAT}' format marker)")
    if state.get("version") != VERSION:
        raise CheckpointError(
            f"{path}: checkpoint version {state.get('version')!r}, but this gru_lib reads version {VERSION}"
        )
    required = REQUIRED_KEYS + (("training",) if require_training else ())
    missing = [key for key in required if key not in state]
    if missing:
        raise CheckpointError(f"{path}: incomplete checkpoint, missing {', '.join(missing)}")
    for key in REQUIRED_KEYS + ("training",):
        if key in state and not isinstance(state[key], dict):
            raise CheckpointError(f"{path}: '{key}' should be a dictionary, got {type(state[key]).__name__}")
    return state


def capture_rng_state() -> dict[str, Any]:
    """Python's, NumPy's and PyTorch's (CPU and, when present, CUDA) random states as tensors and plain types,
    so a checkpoint that holds them still loads with ``weights_only=True``."""
    version, mt_state, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": version, "state": torch.tensor(mt_state, dtype=torch.int64), "gauss": gauss},
        "numpy": {"name": np_name, "keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state(
        (npy["name"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"], npy["gauss"])
    )
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])

