"""``python -m gru_lib COMMAND``: the command line. Each command lives beside the code it drives and
registers itself here with ``add_parser(subparsers)``; a :class:`GruLibError` becomes one line on stderr."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from gru_lib.errors import GruLibError

__all__ = ["main", "build_parser"]

# Modules that define ``add_parser(subparsers) -> None``; each parser sets ``func=callable(args) -> int``.
COMMAND_MODULES: list[str] = ["gru_lib.data", "gru_lib.train", "gru_lib.bench"]


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(
        prog="python -m gru_lib", description="The GRU book's library: train, evaluate, predict, bench."
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except GruLibError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
