"""`vpp convert`, `vpp weights list|download` and `vpp info`: checkpoints on the command line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn
from rich.table import Table
from rich.text import Text

from vppcli.cli.app import app, fail, fail_with, stderr, stdout
from vppcli.cli.options import Verbose
from vppcli.errors import EXIT_INTERRUPTED, VppError

if TYPE_CHECKING:
    from vppcli.config import VppConfig

weights_app = typer.Typer(help="List, download and export models (the bundled default model and the "
                          "authors' released checkpoints).", no_args_is_help=True)
app.add_typer(weights_app, name="weights")


@app.command()
def convert(
    src: Annotated[Path, typer.Argument(help="Official checkpoint (.pth, mmengine layout).")],
    dst: Annotated[Path, typer.Argument(help="Output file (.safetensors).")],
    schedule: Annotated[str | None, typer.Option(
        help="Trained pruning schedule, 0.55 or 0.4; only needed if the checkpoint does not record it.")] = None,
    allow_partial: Annotated[bool, typer.Option(
        help="Write what maps even if keys are missing, left over or mis-shaped (the file then loads "
             "only non-strictly).")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace DST if it exists.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    verbose: Verbose = False,
) -> None:
    """Convert one of the authors' VPP checkpoints into a vppcli .safetensors file."""
    from vppcli.checkpoints.official import convert_file

    try:
        path, conversion = convert_file(src, dst, schedule=schedule, allow_partial=allow_partial, overwrite=overwrite)
    except VppError as error:
        raise fail_with(error) from None
    report = conversion.report
    config = conversion.config
    summary: dict[str, Any] = {
        "source": str(src),
        "output": str(path),
        "variant": report.variant,
        "block_style": report.block_style,
        "num_parameters": conversion.num_parameters,
        "schedule": report.schedule,
        "schedule_source": report.schedule_source,
        "map_selective_module": report.map_module,
        "classes": list(config.class_names),
        "ignored": list(report.ignored),
        "unexpected": list(report.unexpected),
        "missing": list(report.missing),
        "mismatched": list(report.mismatched),
        "filled": list(report.filled),
        "notes": list(report.notes),
    }
    if as_json:
        stdout.print_json(json.dumps(summary))
        return
    table = _key_value_table(f"converted {src.name} -> {path}")
    _add_row(table, "variant", f"{report.variant} ({'VPP' if report.block_style == 'vpp' else 'dense timm'} blocks)")
    _add_row(table, "parameters", f"{conversion.num_parameters:,}")
    _add_row(table, "schedule", Text.assemble(_schedule_text(config), (f" (from {report.schedule_source})", "dim")))
    _add_row(table, "Map-SM", report.map_module)
    _add_row(table, "classes", _classes_text(config.class_names))
    for label, items in (("dropped (unused)", report.ignored), ("BN counters set to 0", report.filled),
                         ("unexpected, dropped", report.unexpected), ("missing", report.missing),
                         ("wrong shape, dropped", report.mismatched)):  # fmt: skip
        if items:
            _add_row(table, label, f"{len(items)}: {', '.join(items[:3])}{', ...' if len(items) > 3 else ''}")
    for note in report.notes:
        _add_row(table, "note", note)
    stdout.print(table)


@weights_app.command("list")
def list_weights(as_json: Annotated[bool, typer.Option("--json", help="Print the table as JSON.")] = False,
                 verbose: Verbose = False) -> None:
    """The bundled model and the authors' released checkpoints, and which are present locally."""
    from vppcli.checkpoints.registry import BUNDLED, OFFICIAL, cache_dir, local_path

    rows: list[dict[str, Any]] = []
    for bundled in BUNDLED:
        present = local_path(bundled.name)
        if present is None:  # an installation without the file: listing it would offer a model that is not there
            continue
        rows.append({"name": bundled.name, "kind": "bundled", "variant": bundled.variant, "description": bundled.description,
                     "size_bytes": present.stat().st_size, "local_path": str(present)})
    for entry in OFFICIAL:
        present = local_path(entry.name)
        rows.append({"name": entry.name, "kind": "official", "variant": entry.variant, "schedule": entry.schedule,
                     "keep_ratio": entry.keep_ratio, "ap_track": entry.ap_track, "map_bbox": entry.map_bbox,
                     "map_segm": entry.map_segm, "params": entry.params,
                     "size_bytes": present.stat().st_size if present else entry.params * 4,
                     "url": entry.url, "log_url": entry.log_url, "local_path": str(present) if present else None})
    if as_json:
        stdout.print_json(json.dumps({"cache": str(cache_dir()), "weights": rows}))
        return
    table = Table(title=Text(f"vpp weights (cache: {cache_dir()})"), title_justify="left")
    table.add_column("name", no_wrap=True)
    for column in ("PKR", "AP_track", "size"):
        table.add_column(column, justify="right", no_wrap=True)
    table.add_column("local", no_wrap=True)
    table.add_column("source", overflow="fold")
    for row in rows:
        official = row["kind"] == "official"
        table.add_row(
            row["name"],
            f"{row['keep_ratio']:.1%}" if official else "-",
            f"{row['ap_track']:.1f}" if official else "-",
            f"{row['size_bytes'] / 1e6:.0f} MB",
            Text("yes", style="green") if row["local_path"] else "no",
            Text(row["url"] if official else row["description"]),
        )
    stdout.print(table)
    stderr.print("AP_track: YouTube-VIS 2021, from the authors' README. Get one with: vpp weights download NAME",
                 soft_wrap=True)


@weights_app.command("download")
def download(
    name: Annotated[str, typer.Argument(help="A name from `vpp weights list`, e.g. vpp-tiny-pkr53.")],
    keep_original: Annotated[bool, typer.Option(help="Also keep the original .pth in the cache.")] = False,
    force: Annotated[bool, typer.Option(help="Download again even if the converted file is present.")] = False,
    verbose: Verbose = False,
) -> None:
    """Download a released checkpoint into the cache (resumable), verify it and convert it."""
    from vppcli.checkpoints.download import fetch, install
    from vppcli.checkpoints.registry import cache_dir, official_entry

    try:
        entry = official_entry(name)
        target = cache_dir() / entry.file_name
        if target.is_file() and not force:
            stderr.print(f"{name} is already downloaded (--force downloads it again)")
            stdout.print(str(target), markup=False, highlight=False)
            return
        columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                   TimeRemainingColumn())  # fmt: skip
        with Progress(*columns, console=stderr, transient=False) as progress:
            task = progress.add_task(name, total=None)
            fetched = fetch(entry, progress=lambda done, total: progress.update(task, completed=done, total=total))
        stderr.print(f"verified {fetched.size:,} bytes (sha256 {fetched.sha256[:16]}...); converting")
        path = install(entry, fetched, keep_original=keep_original)
    except VppError as error:
        raise fail_with(error) from None
    except KeyboardInterrupt:
        raise fail("interrupted; run the same command again to resume", EXIT_INTERRUPTED) from None
    stderr.print(f"saved to {path}", markup=False)
    stdout.print(str(path), markup=False, highlight=False)


@weights_app.command("export")
def export(
    src: Annotated[Path, typer.Argument(help="A vppcli checkpoint, e.g. a training run's last.safetensors.")],
    dst: Annotated[Path, typer.Argument(help="Output file (.safetensors).")],
    dtype: Annotated[str, typer.Option(help="Storage dtype of the weights: fp16, bf16 or fp32.")] = "fp16",
    overwrite: Annotated[bool, typer.Option(help="Replace DST if it exists.")] = False,
    verbose: Verbose = False,
) -> None:
    """Re-save a checkpoint for shipping: weights in a smaller dtype, metadata kept."""
    from vppcli.checkpoints.export import export_checkpoint

    try:
        path = export_checkpoint(src, dst, dtype, overwrite)
    except VppError as error:
        raise fail_with(error) from None
    stderr.print(Text(f"exported {src} -> {path} ({path.stat().st_size / 1e6:.1f} MB, {dtype})"), soft_wrap=True)


@app.command()
def info(
    weights: Annotated[str, typer.Argument(help="A .safetensors file or a model name.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the metadata as JSON.")] = False,
    verbose: Verbose = False,
) -> None:
    """Show what a checkpoint says about itself: variant, parameters, classes, schedule, provenance."""
    from vppcli.checkpoints.metadata import config_overrides, read_metadata
    from vppcli.checkpoints.registry import resolve_weights

    try:
        path = resolve_weights(weights)
        metadata = read_metadata(path)
    except VppError as error:
        raise fail_with(error) from None
    overrides = config_overrides(metadata.config)
    if as_json:
        stdout.print_json(json.dumps({"path": str(path), "file_size": path.stat().st_size, "overrides": overrides,
                                      **metadata.to_dict()}))
        return
    config = metadata.config
    table = _key_value_table(str(path))
    _add_row(table, "variant", metadata.variant + (f" (overrides: {_overrides_text(overrides)})" if overrides else ""))
    _add_row(table, "parameters", f"{metadata.num_parameters:,}")
    _add_row(table, "schedule", _schedule_text(config))
    _add_row(table, "input size", f"{metadata.input_size[0]}x{metadata.input_size[1]} (long side "
                                  f"{config.preprocess.long_side}, padded to {config.preprocess.pad_divisor})")
    _add_row(table, "classes", _classes_text(config.class_names))
    if metadata.dataset:
        _add_row(table, "dataset", metadata.dataset)
    _add_row(table, "dataset ids", _ids_text(config.category_ids))
    for key, value in metadata.provenance.items():
        _add_row(table, key, value)
    for label, value in (("license", metadata.license), ("notes", metadata.notes)):
        if value:
            _add_row(table, label, value)
    if metadata.missing_keys:
        _add_row(table, "partial", f"{len(metadata.missing_keys)} tensors missing; loads only with strict=False")
    stdout.print(table)


def _key_value_table(title: str) -> Table:
    """A label/value table; the title is plain text (it holds paths)."""
    table = Table(title=Text(title), show_header=False, box=None, title_justify="left", padding=(0, 2, 0, 0))
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    return table


def _add_row(table: Table, label: str, value: str | Text) -> None:
    """Labels and values come from paths, checkpoints and their metadata: plain `Text`, never rich
    markup, so `[final]` stays visible and `[/x]` cannot break the output."""
    table.add_row(Text(label), value if isinstance(value, Text) else Text(value))


def _schedule_text(config: VppConfig) -> str:
    from vppcli.checkpoints.schedules import schedule_summary

    summary = schedule_summary(config)
    if not config.pruning.enabled:
        return "dense (no pruning)"
    ratios = ", ".join(f"{r:g}" for r in summary["selective_keep_ratios"])
    return (f"{summary['name']}: Map-SM keeps {summary['map_keep_ratio']:g} from block {summary['map_block']}, "
            f"selective modules {ratios}; nominal keep ratio {summary['nominal_keep_ratio']:.3f}")


def _classes_text(names: tuple[str, ...]) -> str:
    return f"{len(names)}: {', '.join(names[:6])}{', ...' if len(names) > 6 else ''}"


def _ids_text(ids: tuple[int, ...]) -> str:
    if list(ids) == list(range(ids[0], ids[0] + len(ids))):
        return f"{ids[0]}..{ids[-1]} in class order"
    return ", ".join(str(i) for i in ids)


def _overrides_text(overrides: dict[str, Any]) -> str:
    return ", ".join(f"{key}={value}" for key, value in overrides.items())
