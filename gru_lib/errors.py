"""User-facing errors: the command line prints these as one line (no traceback) and exits with status 2."""

from __future__ import annotations

import errno

__all__ = ["GruLibError", "ConfigError", "DataError", "CheckpointError", "describe_os_error",
           "os_error_reason"]


class GruLibError(Exception):
    """A mistake in the user's input (a file, a line, an argument) that the message names."""


class ConfigError(GruLibError, ValueError):
    """A setting out of its range or not among its choices; the message names the setting."""


class DataError(GruLibError):
    """A data file is missing, corrupt or malformed; the message names the file and, where known, the line."""


class CheckpointError(GruLibError):
    """A checkpoint is missing, truncated, corrupted or incompatible; the message names the file."""


# errno -> what the user reads; anything else falls back to the OS's own wording (strerror).
_OS_REASONS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied (operation not permitted)",
    errno.EROFS: "read-only file system",
    errno.ENOENT: "no such file or directory",
    errno.ENOTDIR: "a part of the path is not a directory",
    errno.EISDIR: "is a directory",
    errno.EEXIST: "already exists",
    errno.ELOOP: "too many levels of symbolic links (a symlink loop?)",
    errno.ENAMETOOLONG: "file name too long",
}


def os_error_reason(error: OSError) -> str:
    """What is wrong, in words, without the file name (see :func:`describe_os_error`)."""
    return _OS_REASONS.get(error.errno or -1) or (error.strerror or str(error) or type(error).__name__)


def describe_os_error(error: OSError) -> str:
    """One line for an :class:`OSError`: the file it names (when it names one) and what is wrong, in words
    (``ENOSPC`` -> "no space left on device", ``EACCES``/``EPERM`` -> "permission denied", ...). The command
    line turns every OSError into this line (exit 2), so this is the one place that words them."""
    reason = os_error_reason(error)
    names = [str(name) for name in (error.filename, error.filename2) if name not in (None, "")]
    where = " -> ".join(names)
    return f"{where}: {reason}" if where else reason
