"""`vpp bench`: dense vs pruned timing of one preset on a synthetic clip."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from vppcli.cli.app import Device, DType, app, fail, fail_with, resolve_device, stdout
from vppcli.cli.options import DeviceOption, KeepRatio, Preset, ReuseBudget, Threads, Verbose
from vppcli.errors import VppError

if TYPE_CHECKING:
    from vppcli.bench import BenchReport, RunReport


def _parse_size(text: str) -> tuple[int, int]:
    """HEIGHTxWIDTH, or a long side N for a 16:9 frame (960 -> 544x960: 540 padded to 32)."""
    from vppcli.limits import parse_size

    size = parse_size(text)
    if size.shape is not None:
        return size.shape
    return -(-size.long_side * 9 // 16 // 32) * 32, size.long_side


@app.command()
def bench(
    preset: Annotated[Preset, typer.Option(help="Model preset with random weights.")] = Preset.tiny,
    size: Annotated[str, typer.Option(
        help="Network input HEIGHTxWIDTH (multiples of 32), or a long side N for 16:9.")] = "544x960",
    keep_ratio: KeepRatio = None,
    reuse: ReuseBudget = None,
    frames: Annotated[int, typer.Option(min=1, help="Timed frames per run.")] = 8,
    warmup: Annotated[int, typer.Option(min=1, help="Untimed frames before timing (frame 0 included).")] = 2,
    threads: Threads = None,
    dtype: Annotated[DType, typer.Option(
        help="fp32, bf16 autocast, or auto (bf16 only where it runs natively).")] = DType.fp32,
    device: DeviceOption = Device.auto,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    verbose: Verbose = False,
) -> None:
    """Time dense vs pruned inference per component, with tokens, keep ratio, GFLOPs and memory
    (and pruned with temporal reuse in the pixel decoder, with --reuse)."""
    import torch

    from vppcli.bench import run_benchmark
    from vppcli.config import preset as preset_config
    from vppcli.limits import check_keep_ratio

    try:
        height, width = _parse_size(size)
        check_keep_ratio(keep_ratio, preset_config(preset.value))
    except VppError as error:
        raise fail_with(error) from None
    if threads is not None:
        torch.set_num_threads(threads)
    torch_device = resolve_device(device)
    try:
        report = run_benchmark(preset.value, (height, width), keep_ratio, frames, warmup, dtype.resolve(torch_device),
                               torch_device, reuse_budgets=() if reuse is None else (reuse,))
    except ValueError as error:
        raise fail(str(error)) from None
    if as_json:
        stdout.print_json(json.dumps(report.to_dict()))
        return
    _print_bench(report)


def _ms_rate(run: RunReport, name: str) -> str:
    ms = run.ms_per_frame if name == "total" else run.component_ms[name]
    rate = run.gflops_per_s.get(name)
    return f"{ms:.1f}" if rate is None else f"{ms:.1f} ({rate:.1f})"


def _column(run: RunReport) -> str:
    if run.label == "dense":
        return "dense"
    ratio = run.keep_ratio if run.keep_ratio is not None else "native"
    return f"pruned (r={ratio})" if run.reuse_budget is None else f"+ reuse {run.reuse_budget:g}"


def _print_bench(report: BenchReport) -> None:
    runs = report.runs
    dense = runs[0]
    title = (f"vpp bench: {report.preset} {report.size[0]}x{report.size[1]}, {report.dtype}, {report.device}, "
             f"{report.threads} threads, {report.frames} frames")
    table = Table(title=title)
    table.add_column("")
    for run in runs:
        table.add_column(_column(run), justify="right")
    table.add_row("ms / frame (GFLOP/s)", *(_ms_rate(run, "total") for run in runs))
    for name in dense.component_ms:
        table.add_row(f"  {name}", *(_ms_rate(run, name) for run in runs))
    table.add_row("realised keep ratio", *(f"{run.realised_keep_ratio:.3f}" for run in runs))
    table.add_row("tokens per block", *(" ".join(f"{t:g}" for t in run.tokens_per_block) for run in runs))
    if len(runs) > 2:
        table.add_row("encoder queries recomputed", *(f"{run.encoder_query_ratio:.3f}" for run in runs))
        table.add_row("FPN conv pixels computed", *(f"{run.fpn_pixel_ratio:.3f}" for run in runs))
        table.add_row("dense refreshes (timed frames)", *(str(run.refreshes) for run in runs))
    for name in ("vit_blocks", "adapter", "pixel_decoder", "backbone", "head", "total"):
        table.add_row(f"GFLOPs {name}", *(f"{run.gflops[name]:.2f}" for run in runs))
    table.add_row(f"peak memory MB ({dense.peak_memory_kind})", *(f"{run.peak_memory_mb:.0f}" for run in runs))
    stdout.print(table)
    matmul = report.matmul_gflops_per_s[report.dtype]
    stdout.print(
        f"machine: {report.dtype} matmul {matmul:.1f} GFLOP/s; dense whole model at "
        f"{report.fraction_of_matmul(dense, 'total'):.0%} of it, pixel decoder at "
        f"{report.fraction_of_matmul(dense, 'pixel_decoder'):.0%}"
    )
    attn = report.deform_attn
    stdout.print(
        f"pixel-decoder deformable attention ({attn['queries']:.0f} queries): {attn['ms']:.1f} ms vs "
        f"{attn['reference_ms']:.1f} ms with grid_sample ({attn['speedup']:.1f}x); sampling alone "
        f"{attn['sampling_ms']:.1f} vs {attn['sampling_reference_ms']:.1f} ms ({attn['sampling_speedup']:.1f}x)"
    )
    ratios = report.ratios()
    stdout.print(
        f"ViT blocks: time ratio {ratios['vit_time_ratio']:.3f} vs token ratio {ratios['token_ratio']:.3f} "
        f"(FLOPs ratio {ratios['vit_flops_ratio']:.3f}); whole model: {ratios['model_speedup']:.2f}x faster, "
        f"FLOPs-ideal {ratios['model_flops_speedup']:.2f}x"
    )
    for run in runs[2:]:
        stdout.print(
            f"{_column(run)}: whole model {ratios[f'{run.label}_model_speedup']:.2f}x faster than dense, "
            f"FLOPs-ideal {ratios[f'{run.label}_model_flops_speedup']:.2f}x"
        )
