"""The command-line flags several commands share, defined once so that each means the same everywhere.

``--progress/--no-progress`` (a live line on stderr; default: on when stderr is a terminal), ``--threads``
(torch threads) and ``--device`` (where models train or run): ``train``, ``lottery``, ``evaluate`` and
``sweep`` take the ones that apply to them, spelled and defaulting alike.
"""

from __future__ import annotations

import argparse
import sys


def add_progress(parser: argparse.ArgumentParser, what: str = "a live progress line on stderr") -> None:
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help=f"{what} (default: on when stderr is a terminal)")


def show_progress(args: argparse.Namespace) -> bool:
    """Whether ``--progress/--no-progress`` (or, when neither is given, a terminal on stderr) asks for it."""
    return sys.stderr.isatty() if args.progress is None else bool(args.progress)


def add_threads(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")


def add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:<index>, mps or auto (default cpu)")


def progress_argv(args: argparse.Namespace) -> list[str]:
    """``--progress`` / ``--no-progress`` as given (nothing when neither was), to pass on to another command."""
    return [] if args.progress is None else ["--progress" if args.progress else "--no-progress"]


__all__ = ["add_device", "add_progress", "add_threads", "progress_argv", "show_progress"]
