"""How every towerlite command line starts and ends, so they all behave alike: log records go
to stderr as plain lines (stdout keeps each command's summary), a TowerliteError (a caller's
mistake or a missing input) prints one line and exits 1, Ctrl-C exits 130 and says how to
resume."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

from .errors import TowerliteError


def setup_logging(level: int = logging.INFO) -> None:
    """Plain `message` lines on stderr; a no-op when a handler is already set (tests, a host
    app)."""
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr)


def run(command: Callable[[argparse.Namespace], int | None], args: argparse.Namespace) -> int:
    """`command(args)`'s exit status, with towerlite's error and interrupt handling."""
    setup_logging()
    try:
        return command(args) or 0
    except TowerliteError as exc:
        print(f"towerlite: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("towerlite: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


def standalone(
    prog: str,
    description: str,
    add_arguments: Callable[[argparse.ArgumentParser], None],
    command: Callable[[argparse.Namespace], int | None],
    argv: list[str] | None = None,
) -> int:
    """A stage's `python -m` entry: its own parser, the same handling as `towerlite <stage>`."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    add_arguments(parser)
    return run(command, parser.parse_args(argv))
