"""The `vpp` command line: thin Typer commands over the Python API. Only this module prints."""

from __future__ import annotations

import json
import logging
from enum import Enum
from typing import TYPE_CHECKING, Annotated

import torch
import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from vppcli import __version__

if TYPE_CHECKING:
    from vppcli.bench import BenchReport

app = typer.Typer(
    name="vpp",
    help="Fast video instance segmentation with Video Patch Pruning (VPP).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
stdout = Console()
stderr = Console(stderr=True)

EXIT_USAGE = 2


class DType(str, Enum):
    fp32 = "fp32"
    bf16 = "bf16"


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


def _fail(message: str, code: int = EXIT_USAGE) -> typer.Exit:
    stderr.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def _parse_size(text: str) -> tuple[int, int]:
    try:
        height, width = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise _fail(f"--size must look like HEIGHTxWIDTH (e.g. 544x960), got {text!r}") from None
    return height, width


def _resolve_device(device: Device) -> torch.device:
    if device is Device.auto:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device is Device.cuda and not torch.cuda.is_available():
        raise _fail("--device cuda was asked for but no CUDA device is available")
    return torch.device(device.value)


def _version_callback(value: bool) -> None:
    if value:
        stdout.print(f"vppcli {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[bool, typer.Option("--version", callback=_version_callback, is_eager=True,
                                          help="Print the version and exit.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress to stderr.")] = False,
) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(message)s",
        handlers=[RichHandler(console=stderr, show_time=False, show_path=False)],
    )


@app.command()
def bench(
    preset: Annotated[str, typer.Option(help="Model preset with random weights: tiny, small, compact.")] = "tiny",
    size: Annotated[str, typer.Option(help="Network input HEIGHTxWIDTH (multiples of 32).")] = "544x960",
    keep_ratio: Annotated[float | None, typer.Option(
        help="Patch keep ratio of the pruned run, in (0, 1]; omit for the trained (native) pruning.")] = None,
    frames: Annotated[int, typer.Option(min=1, help="Timed frames per run.")] = 8,
    warmup: Annotated[int, typer.Option(min=1, help="Untimed frames before timing (frame 0 included).")] = 2,
    threads: Annotated[int | None, typer.Option(min=1, help="CPU threads (default: torch's choice).")] = None,
    dtype: Annotated[DType, typer.Option(help="fp32, or bf16 autocast.")] = DType.fp32,
    device: Annotated[Device, typer.Option(help="auto, cpu or cuda.")] = Device.cpu,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Time dense vs pruned inference per component, with tokens, keep ratio, GFLOPs and memory."""
    from vppcli.bench import run_benchmark

    height, width = _parse_size(size)
    if threads is not None:
        torch.set_num_threads(threads)
    torch_dtype = torch.bfloat16 if dtype is DType.bf16 else torch.float32
    try:
        report = run_benchmark(preset, (height, width), keep_ratio, frames, warmup, torch_dtype,
                               _resolve_device(device))
    except ValueError as error:
        raise _fail(str(error)) from None
    if as_json:
        stdout.print_json(json.dumps(report.to_dict()))
        return
    _print_bench(report)


def _print_bench(report: BenchReport) -> None:
    dense, pruned = report.runs
    title = (f"vpp bench: {report.preset} {report.size[0]}x{report.size[1]}, {report.dtype}, {report.device}, "
             f"{report.threads} threads, {report.frames} frames")
    table = Table(title=title)
    table.add_column("")
    table.add_column("dense", justify="right")
    table.add_column(f"pruned (r={pruned.keep_ratio if pruned.keep_ratio is not None else 'native'})",
                     justify="right")
    table.add_row("ms / frame", f"{dense.ms_per_frame:.1f}", f"{pruned.ms_per_frame:.1f}")
    for name in dense.component_ms:
        table.add_row(f"  {name}", f"{dense.component_ms[name]:.1f}", f"{pruned.component_ms[name]:.1f}")
    table.add_row("realised keep ratio", f"{dense.realised_keep_ratio:.3f}", f"{pruned.realised_keep_ratio:.3f}")
    table.add_row("tokens per block", " ".join(f"{t:g}" for t in dense.tokens_per_block),
                  " ".join(f"{t:g}" for t in pruned.tokens_per_block))
    for name in ("vit_blocks", "backbone", "head", "total"):
        table.add_row(f"GFLOPs {name}", f"{dense.gflops[name]:.2f}", f"{pruned.gflops[name]:.2f}")
    table.add_row(f"peak memory MB ({dense.peak_memory_kind})", f"{dense.peak_memory_mb:.0f}",
                  f"{pruned.peak_memory_mb:.0f}")
    stdout.print(table)
    ratios = report.ratios()
    stdout.print(
        f"ViT blocks: time ratio {ratios['vit_time_ratio']:.3f} vs token ratio {ratios['token_ratio']:.3f} "
        f"(FLOPs ratio {ratios['vit_flops_ratio']:.3f}); whole model: {ratios['model_speedup']:.2f}x faster, "
        f"FLOPs-ideal {ratios['model_flops_speedup']:.2f}x"
    )
