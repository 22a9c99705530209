"""User-facing errors: the command line prints these as one line (no traceback) and exits with status 2."""

from __future__ import annotations

__all__ = ["GruLibError", "DataError", "CheckpointError"]


class GruLibError(Exception):
    """A mistake in the user's input (a file, a line, an argument) that the message names."""


class DataError(GruLibError):
    """A data file is missing, corrupt or malformed; the message names the file and, where known, the line."""


class CheckpointError(GruLibError):
    """A checkpoint is missing, truncated, corrupted or incompatible; the message names the file."""
