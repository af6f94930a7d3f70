"""The ``bora-ref`` command line: ``bora-ref report`` (the main job) and friends.

Each subcommand lives in its own module and contributes a ``register(subparsers)`` function
that adds its parser and sets ``func`` (a callable taking the parsed namespace, returning the
exit code).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from ._version import __version__
from ._validation import BoRAValueError

__all__ = ["main", "build_parser"]


# Modules that contribute subcommands through ``register(subparsers)``.
_SUBCOMMAND_MODULES = ("bora_ref.report.cli", "bora_ref.testing._cli")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bora-ref",
        description="Reference tools for BoRA (Block-Diversified Low-Rank Adaptation): rank and parameter "
        "reports on real layer shapes, and more.",
    )
    parser.add_argument("--version", action="version", version=f"bora-ref {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in _SUBCOMMAND_MODULES:
        importlib.import_module(module).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``bora-ref`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except BoRAValueError as exc:
        print(f"bora-ref {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
