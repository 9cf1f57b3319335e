"""The `vpp` command line: thin Typer commands over the Python API. Only this package prints.

Each command lives in its own module and registers itself on `app` when `vppcli.cli.dispatch`
imports it. The command modules import torch, OpenCV and the model only when a command runs, so
`--help`, `--version` and `vpp weights list` start fast. Ctrl-C at any moment, even while Python
is still importing, ends with one line and exit code 130.
"""

from __future__ import annotations

import sys

from vppcli.errors import EXIT_INTERRUPTED


def _interrupted() -> int:
    # A plain write: rich may not be imported yet, or be in the middle of drawing.
    try:
        sys.stderr.write("\nerror: interrupted\n")
        sys.stderr.flush()
    except (OSError, ValueError):  # stderr already closed: the exit code still says it
        pass
    return EXIT_INTERRUPTED


def main() -> None:
    """Entry point of `vpp` and `python -m vppcli`."""
    try:
        code = run()
    except KeyboardInterrupt:
        code = _interrupted()
    sys.exit(code)


try:
    from vppcli.cli.dispatch import app, run
except KeyboardInterrupt:  # Ctrl-C while `vpp` is still importing typer and rich
    sys.exit(_interrupted())

__all__ = ["app", "main"]
