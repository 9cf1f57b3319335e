"""The Typer app, the two consoles and what every command shares. Only `vppcli.cli` prints."""

from __future__ import annotations

import logging
import sys
from enum import Enum
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.text import Text

from vppcli import __version__
from vppcli.errors import EXIT_CODES_HELP, EXIT_USAGE, VppError

if TYPE_CHECKING:  # torch is imported where a command needs it, not to print --help
    import torch

app = typer.Typer(
    name="vpp",
    help=f"Fast video instance segmentation with Video Patch Pruning (VPP).\n\n{EXIT_CODES_HELP}",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Requested data only goes to stdout; progress, logs and errors go to stderr.
stdout = Console(soft_wrap=True)
stderr = Console(stderr=True)


class DType(str, Enum):
    auto = "auto"  # bf16 where it runs natively (CUDA, AVX512-BF16/AMX CPUs), else fp32
    fp32 = "fp32"
    bf16 = "bf16"

    def resolve(self, device: torch.device) -> torch.dtype:
        """The dtype to compute in on `device` (warns once for bf16 on a CPU without bf16)."""
        from vppcli.hardware import resolve_dtype

        return resolve_dtype(self.value, device)

    @property
    def torch_dtype(self) -> torch.dtype:
        """`resolve` for the CPU; commands that know their device call `resolve(device)`."""
        import torch

        return self.resolve(torch.device("cpu"))


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class _ErrorLine:
    """Print one error line on stderr (never wrapped, so scripts can grep it). The message is
    plain text: paths like `clip [final].mp4` must not be read as rich markup. `printed` says
    whether one was printed (an interrupted command that printed nothing still gets a line)."""

    printed = False

    def __call__(self, message: str) -> None:
        self.printed = True
        stderr.print(Text.assemble(("error:", "bold red"), " ", message), highlight=False, soft_wrap=True)


error_line = _ErrorLine()


def fail(message: str, code: int = EXIT_USAGE) -> typer.Exit:
    """Report `message` and return the exit to raise: `raise fail(...)`."""
    error_line(message)
    return typer.Exit(code)


def fail_with(error: VppError) -> typer.Exit:
    return fail(str(error), error.exit_code)


def resolve_device(device: Device) -> torch.device:
    import torch

    if device is Device.auto:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device is Device.cuda and not torch.cuda.is_available():
        raise fail("--device cuda was asked for but no CUDA device is available")
    return torch.device(device.value)


def _version_callback(value: bool) -> None:
    if value:
        stdout.print(f"vppcli {__version__}")
        raise typer.Exit()


class CurrentStderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Plain log lines to whatever `sys.stderr` is when a record arrives. A stream bound when the
    command starts outlives an in-process run (Click's test runner, a notebook) and is closed by then."""

    @property  # type: ignore[override]
    def stream(self) -> object:
        return sys.stderr

    @stream.setter
    def stream(self, _stream: object) -> None:
        pass


@app.callback()
def main(
    version: Annotated[bool, typer.Option("--version", callback=_version_callback, is_eager=True,
                                          help="Print the version and exit.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log details to stderr.")] = False,
) -> None:
    handler: logging.Handler
    if stderr.is_terminal:
        handler = RichHandler(console=stderr, show_time=False, show_path=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:  # logs read by scripts or CI: one plain line per message, never wrapped
        handler = CurrentStderrHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, force=True, handlers=[handler])
