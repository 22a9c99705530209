"""User-facing errors: the command line prints these as one line (no traceback) and exits with status 2."""

from __future__ import annotations

__all__ = ["GruLibError", "ConfigError", "DataError", "CheckpointError"]


class GruLibError(Exception):
    """A mistake in the user's input (a file, a line, an argument) that the message names."""


class ConfigError(GruLibError, ValueError):
    """A setting out of its range or not among its choices; the message names the setting."""


class DataError(GruLibError):
    """A data file is missing, corrupt or malformed; the message names the file and, where known, the line."""


class CheckpointError(GruLibError):
    """A checkpoint is missing, truncated, corrupted or incompatible; the message names the file."""
