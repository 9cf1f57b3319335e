"""`vpp segment`: segment, classify and track the objects of videos; write overlays, JSON, masks."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import torch
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from vppcli.cli.app import DType, Device, app, error_line, fail_with, resolve_device, stderr
from vppcli.efficiency import merged
from vppcli.errors import (
    EXIT_CODES_HELP,
    EXIT_BROKEN_PIPE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    UsageError,
    VppError,
)
from vppcli.model.rovis import VppModel
from vppcli.outputs import parse_formats
from vppcli.outputs.atomic import ensure_output_dir
from vppcli.segmenter import SegmentedFrame, Segmenter, VideoResult
from vppcli.video import DEFAULT_FPS, Backend, FrameSelection, open_source

logger = logging.getLogger(__name__)
DEFAULT_FORMATS = ("overlay", "ytvis")


@dataclass(frozen=True)
class Failure:
    input: str
    error: str
    exit_code: int


@dataclass
class RunOutcome:
    """What the whole call did, for the summary and the exit code."""

    videos: list[VideoResult] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """The first failure's code: with several inputs, one bad input fails the run at the end."""
        return self.failures[0].exit_code if self.failures else EXIT_OK

    def to_dict(self) -> dict[str, object]:
        total = merged(v.efficiency for v in self.videos).report()
        return {
            "videos": [v.to_dict() for v in self.videos],
            "failed": [dataclasses.asdict(f) for f in self.failures],
            "frames": total.frames,
            "fps": round(total.fps, 3),
            "keep_ratio": round(total.keep_ratio, 4),
            "tracks": sum(len(v.tracks) for v in self.videos),
        }


def _read_inputs(inputs: list[str]) -> list[str]:
    """Expand `-` into the paths given one per line on stdin."""
    paths: list[str] = []
    for item in inputs:
        if item == "-":
            paths.extend(line.strip() for line in sys.stdin if line.strip())
        else:
            paths.append(item)
    return paths


def _load_model(weights: str | None, preset_name: str | None, device: torch.device) -> VppModel:
    if weights is not None and preset_name is not None:
        raise UsageError("give either --weights or --preset, not both")
    if preset_name is not None:
        from vppcli.config import preset
        from vppcli.model.rovis import build_model

        model = build_model(preset(preset_name), seed=0)  # the same random model every run
        logger.warning("--preset %s: random weights, the output is meaningless (for testing the pipeline)",
                       preset_name)
        return model
    if weights is None:
        raise UsageError("no model: pass --weights FILE_OR_NAME (see `vpp weights list`), or --preset NAME "
                         "for random weights; the bundled default model is not shipped yet")
    from vppcli.checkpoints import load_model

    return load_model(weights, device=device)


def _unique_name(name: str, taken: set[str]) -> str:
    candidate, number = name, 2
    while candidate in taken:
        candidate, number = f"{name}-{number}", number + 1
    taken.add(candidate)
    return candidate


def _progress(quiet: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[fps]:.1f} fps"), TextColumn("keep {task.fields[keep]:.2f}"),
        TimeRemainingColumn(), console=stderr, transient=True,
        disable=quiet or not stderr.is_terminal,
    )


@app.command(epilog=EXIT_CODES_HELP)
def segment(
    inputs: Annotated[list[str], typer.Argument(
        help="Video files, frame directories or images; `-` reads one path per line from stdin.",
        show_default=False)],
    formats: Annotated[list[str] | None, typer.Option(
        "--format", "-f", help="overlay, ytvis, coco, png, jsonl, and the pruning view: pruning (pruning.mp4, "
        "the patches each pruning stage keeps), pruning-json (pruning.jsonl, the keep masks as bitmaps); "
        "repeatable or comma-separated \\[default: overlay,ytvis].", show_default=False)] = None,
    output_dir: Annotated[Path, typer.Option(
        "--output-dir", "-o", help="Outputs of input NAME go to OUTPUT_DIR/NAME/.")] = Path("runs/segment"),
    weights: Annotated[str | None, typer.Option(help="Checkpoint file or registered name.")] = None,
    preset: Annotated[str | None, typer.Option(
        help="Use a preset with random weights instead (tiny, small, compact); for testing only.")] = None,
    keep_ratio: Annotated[float | None, typer.Option(
        help="Patch keep ratio in (0, 1]; omit to prune as trained, 1 = dense.")] = None,
    score_threshold: Annotated[float, typer.Option(help="Drop instances scoring below this.")] = 0.0,
    classes: Annotated[str | None, typer.Option(help="Comma-separated class names to keep.")] = None,
    device: Annotated[Device, typer.Option(help="auto, cpu or cuda.")] = Device.auto,
    dtype: Annotated[DType, typer.Option(help="fp32, or bf16 autocast.")] = DType.fp32,
    threads: Annotated[int | None, typer.Option(min=1, help="CPU threads (default: torch's choice).")] = None,
    size: Annotated[int | None, typer.Option(
        min=32, help="Long side of the network input in pixels [default: the model's, 960].")] = None,
    start: Annotated[int, typer.Option(min=0, help="First frame to process.")] = 0,
    max_frames: Annotated[int | None, typer.Option(min=1, help="Process at most this many frames.")] = None,
    stride: Annotated[int, typer.Option(min=1, help="Process every STRIDE-th frame.")] = 1,
    fps: Annotated[float, typer.Option(min=0.001, help="Frame rate of frame directories and images.")] = DEFAULT_FPS,
    backend: Annotated[str, typer.Option(help="Video reader: auto (decord, else OpenCV), decord, opencv.")] = "auto",
    reference_noise: Annotated[bool, typer.Option(
        help="Keep the reference's Gumbel noise at test time (stochastic; reproducible with --seed).")] = False,
    seed: Annotated[int, typer.Option(help="Seed of the reference-noise mode.")] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress and no summary on stderr.")] = False,
    json_summary: Annotated[bool, typer.Option(
        help="Print the run summary as JSON on stdout (with jsonl: the last line, key \"summary\").")] = False,
) -> None:
    """Segment, classify and track every object in videos, with Video Patch Pruning.

    Writes OUTPUT_DIR/NAME/{overlay.mp4, ytvis.json, coco.json, masks/, pruning.mp4,
    pruning.jsonl} atomically; jsonl goes to stdout, one line per frame. Progress and the
    summary go to stderr.
    """
    if quiet:
        logging.getLogger().setLevel(logging.ERROR)
    try:
        chosen = parse_formats(formats) if formats else DEFAULT_FORMATS
        if backend not in ("auto", "decord", "opencv"):
            raise UsageError(f"unknown --backend {backend!r}; choose auto, decord or opencv")
        selection = FrameSelection(start, max_frames, stride)
        paths = _read_inputs(inputs)
        if not paths:
            raise UsageError("no input: give video files, frame directories or images (or `-` with paths on stdin)")
        if any(f != "jsonl" for f in chosen):
            ensure_output_dir(output_dir)
        if threads is not None:
            torch.set_num_threads(threads)
        torch_device = resolve_device(device)
        model = _load_model(weights, preset, torch_device)
        segmenter = Segmenter(
            model, keep_ratio=keep_ratio, score_threshold=score_threshold,
            classes=[c.strip() for c in classes.split(",") if c.strip()] if classes else None,
            device=torch_device, dtype=dtype.torch_dtype, long_side=size,
            reference_noise=reference_noise, seed=seed,
        )
    except VppError as error:
        raise fail_with(error) from None
    except KeyboardInterrupt:
        error_line("interrupted")
        raise typer.Exit(EXIT_INTERRUPTED) from None

    outcome = RunOutcome()
    names: set[str] = set()
    try:
        for video_id, path in enumerate(paths, start=1):
            _segment_one(segmenter, path, video_id, chosen, output_dir, selection,
                         backend, fps, names, quiet, outcome)
        _report(outcome, quiet, json_summary)
    except KeyboardInterrupt:
        error_line("interrupted; outputs of the unfinished video were removed")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except BrokenPipeError:  # `vpp segment ... -f jsonl | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise typer.Exit(EXIT_BROKEN_PIPE) from None
    raise typer.Exit(outcome.exit_code)


def _segment_one(segmenter: Segmenter, path: str, video_id: int, formats: tuple[str, ...], output_dir: Path,
                 selection: FrameSelection, backend: Backend, image_fps: float, names: set[str],
                 quiet: bool, outcome: RunOutcome) -> None:
    try:
        with open_source(path, backend, image_fps) as source:
            name = _unique_name(source.info.name, names)
            total = selection.count(source.info.num_frames)
            with _progress(quiet) as progress:
                task = progress.add_task(name, total=total, fps=0.0, keep=1.0)

                def on_frame(item: SegmentedFrame) -> None:
                    done = progress.tasks[task].completed + 1
                    stats = item.instances.stats
                    elapsed = progress.tasks[task].elapsed or 0.0
                    progress.update(task, advance=1, fps=done / elapsed if elapsed else 0.0,
                                    keep=stats.keep_ratio if stats else 1.0)

                result = segmenter.segment(source, formats=formats, output_dir=output_dir / name,
                                           selection=selection, video_id=video_id, name=name, stream=sys.stdout,
                                           on_frame=on_frame)
    except VppError as error:
        error_line(str(error))
        outcome.failures.append(Failure(path, str(error), error.exit_code))
        return
    outcome.videos.append(result)


def _report(outcome: RunOutcome, quiet: bool, json_summary: bool) -> None:
    summary = outcome.to_dict()
    if json_summary:
        sys.stdout.write(json.dumps({"summary": summary}) + "\n")
        sys.stdout.flush()
    if quiet or not outcome.videos:
        return
    table = Table(title="vpp segment", title_justify="left")
    for column in ("video", "frames", "fps", "keep ratio", "GFLOPs/frame", "tracks", "written to"):
        table.add_column(column, justify="left" if column in ("video", "written to") else "right",
                         overflow="fold")
    for video in outcome.videos:
        written = sorted({str(p.parent) + "/" for p in video.outputs}) or ["-"]
        table.add_row(Text(video.name), str(video.frames), f"{video.fps:.2f}", f"{video.keep_ratio:.3f}",
                      f"{video.gflops_per_frame:.1f}", str(len(video.tracks)), Text(", ".join(written)))
    stderr.print(table)
    for encoder in sorted({v.overlay_encoder for v in outcome.videos if v.overlay_encoder}):
        stderr.print(Text(f"overlay encoder: {encoder}"), soft_wrap=True)
    if outcome.failures:
        stderr.print(f"{len(outcome.failures)} of {len(outcome.failures) + len(outcome.videos)} inputs failed")

