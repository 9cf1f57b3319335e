"""Runs the Typer app with vppcli's error conventions: one `error:` line, an exit code, no panel."""

from __future__ import annotations

import logging

import typer
from typer.exceptions import TyperException

from vppcli.cli import bench  # noqa: F401  (registers `vpp bench`)
from vppcli.cli import checkpoints  # noqa: F401  (registers `vpp convert`, `vpp weights`, `vpp info`)
from vppcli.cli import evaluate  # noqa: F401  (registers `vpp eval`)
from vppcli.cli import segment  # noqa: F401  (registers `vpp segment`)
from vppcli.cli import synth  # noqa: F401  (registers `vpp synth`)
from vppcli.cli import train  # noqa: F401  (registers `vpp train`)
from vppcli.cli.app import app, error_line
from vppcli.cli.help import polish_help
from vppcli.errors import EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE

logger = logging.getLogger(__name__)


def run() -> int:
    """Run `vpp` on sys.argv; the exit code. click's usage errors (unknown option, bad value,
    missing argument) become one `error:` line and exit 2, like every other error."""
    command = polish_help(typer.main.get_command(app))
    error_line.printed = False  # per run (tests call run() many times in one process)
    try:
        code = command.main(prog_name="vpp", standalone_mode=False)
    except TyperException as error:  # typer's (vendored click) usage errors
        if type(error).__name__ == "NoArgsIsHelpError":  # `vpp`, `vpp weights`: typer printed the help
            return EXIT_OK
        context = getattr(error, "ctx", None)
        hint = f" (see `{context.command_path} --help`)" if context is not None else ""
        format_message = getattr(error, "format_message", None)
        message = format_message() if callable(format_message) else str(error)
        error_line(f"{message.strip() or type(error).__name__}{hint}")
        return EXIT_USAGE
    except typer.Abort:  # Ctrl-C that click caught first
        error_line("interrupted")
        return EXIT_INTERRUPTED
    except Exception as error:  # a bug: one line, the traceback with -v (the logs say what led to it)
        logger.info("traceback of the internal error:", exc_info=True)
        error_line(f"internal error: {type(error).__name__}: {error} (rerun with -v for the traceback, and "
                   "please report it)")
        return EXIT_INTERNAL
    if code == EXIT_INTERRUPTED and not error_line.printed:  # click turned Ctrl-C into a silent Exit(130)
        error_line("interrupted")
    return code if isinstance(code, int) else EXIT_OK
