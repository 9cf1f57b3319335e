"""The `vpp` command line: thin Typer commands over the Python API. Only this package prints.

Each command lives in its own module and registers itself on `app` when imported here.
"""

import sys

import typer
from typer.exceptions import TyperException

from vppcli.cli import bench  # noqa: F401  (registers `vpp bench`)
from vppcli.cli import checkpoints  # noqa: F401  (registers `vpp convert`, `vpp weights`, `vpp info`)
from vppcli.cli import evaluate  # noqa: F401  (registers `vpp eval`)
from vppcli.cli import segment  # noqa: F401  (registers `vpp segment`)
from vppcli.cli import synth  # noqa: F401  (registers `vpp synth`)
from vppcli.cli import train  # noqa: F401  (registers `vpp train`)
from vppcli.cli.app import app, error_line
from vppcli.errors import EXIT_INTERRUPTED, EXIT_USAGE


def main() -> None:
    """Entry point of `vpp` and `python -m vppcli`: click's usage errors (unknown option, bad value,
    missing argument) become one `error:` line and exit 2, like every other error, instead of a
    framed panel."""
    try:
        code = app(prog_name="vpp", standalone_mode=False)
    except TyperException as error:  # typer's (vendored click) usage errors
        context = getattr(error, "ctx", None)
        hint = f" (see `{context.command_path} --help`)" if context is not None else ""
        format_message = getattr(error, "format_message", None)
        message = format_message() if callable(format_message) else str(error)
        error_line(f"{message.strip() or type(error).__name__}{hint}")
        code = EXIT_USAGE
    except typer.Abort:  # Ctrl-C outside a command's own handling
        error_line("interrupted")
        code = EXIT_INTERRUPTED
    sys.exit(code if isinstance(code, int) else 0)


__all__ = ["app", "main"]
