"""`vpp segment`: segment, classify and track the objects of videos; write overlays, JSON, masks.

Everything that can be checked without the model is checked before it is loaded (options, that
the inputs exist, that the output directory is writable); torch and the writers are imported
only then, so `vpp segment --help` stays fast.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table
from rich.text import Text

from vppcli.cli.app import Device, DType, app, error_line, fail_with, resolve_device, stderr
from vppcli.cli.models import load_model, model_config
from vppcli.cli.options import (
    Backend,
    DeviceOption,
    KeepRatio,
    PresetOption,
    Quiet,
    ScoreThreshold,
    Size,
    Threads,
    Verbose,
    Weights,
)
from vppcli.cli.progress import RunProgress
from vppcli.errors import EXIT_BROKEN_PIPE, EXIT_CODES_HELP, EXIT_INTERRUPTED, EXIT_OK, UsageError, VppError

if TYPE_CHECKING:
    import torch

    from vppcli.model.rovis import VppModel
    from vppcli.segmenter import Segmenter, VideoResult
    from vppcli.video import FrameSelection

DEFAULT_FORMATS = ("overlay", "ytvis")
DEFAULT_FPS = 30.0  # = vppcli.video.DEFAULT_FPS (tests check), not imported: it would import OpenCV for --help
FORMAT_CHOICES = "overlay|ytvis|coco|png|jsonl|pruning|pruning-json"


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

    def fail(self, path: str, error: VppError) -> None:
        error_line(str(error))
        self.failures.append(Failure(path, str(error), error.exit_code))

    def to_dict(self) -> dict[str, object]:
        from vppcli.efficiency import merged

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


def _existing(paths: list[str], outcome: RunOutcome) -> list[tuple[int, str]]:
    """(video id, path) of the inputs that exist, the id being the position among all inputs; the
    others are reported now, before a model is loaded for nothing."""
    from vppcli.errors import InputError

    found = []
    for video_id, path in enumerate(paths, start=1):
        if os.path.exists(path):
            found.append((video_id, path))
        else:
            outcome.fail(path, InputError(f"no such file or directory: {path}"))
    return found


def _parse_classes(classes: str | None) -> list[str] | None:
    if classes is None:
        return None
    names = [c.strip() for c in classes.split(",") if c.strip()]
    if not names:
        raise UsageError(f"--classes names no class ({classes!r}); give names like person,dog, or omit it")
    return names


def _load_model(weights: str | None, preset_name: str | None, device: torch.device) -> VppModel:
    return load_model(weights, preset_name, device)


def _unique_name(name: str, taken: set[str], is_free: Callable[[str], bool] = lambda _: True) -> str:
    """`name`, else `name-2`, `name-3`, ...: the first not in `taken` for which `is_free` holds."""
    candidate, number = name, 2
    while candidate in taken or not is_free(candidate):
        candidate, number = f"{name}-{number}", number + 1
    taken.add(candidate)
    return candidate


def _unused_dir(output_dir: Path) -> Callable[[str], bool]:
    """Whether OUTPUT_DIR/NAME holds no earlier run: absent, or nothing in it but hidden files
    (a crashed run's temporaries), so that a new run never mixes its files with another's."""
    def is_free(name: str) -> bool:
        directory = output_dir / name
        if not directory.exists():
            return True
        return directory.is_dir() and all(entry.name.startswith(".") for entry in directory.iterdir())
    return is_free


@dataclass
class Naming:
    """Names of the outputs of one call: video names unique within the call, and each video's
    directory (a fresh one per run unless `exist_ok`)."""

    output_dir: Path
    exist_ok: bool
    names: set[str] = field(default_factory=set)
    dirs: set[str] = field(default_factory=set)

    def video(self, source_name: str) -> tuple[str, Path]:
        name = _unique_name(source_name, self.names)
        if self.exist_ok:
            self.dirs.add(name)
            return name, self.output_dir / name
        return name, self.output_dir / _unique_name(source_name, self.dirs, _unused_dir(self.output_dir))


@app.command(epilog=EXIT_CODES_HELP)
def segment(
    inputs: Annotated[list[str], typer.Argument(
        help="Video files, frame directories or images; `-` reads one path per line from stdin.",
        show_default=False)],
    formats: Annotated[list[str] | None, typer.Option(
        "--format", "-f", metavar=f"[{FORMAT_CHOICES}],...", help="overlay, ytvis, coco, png, jsonl, and the "
        "pruning view: pruning (pruning.mp4, the patches each pruning stage keeps), pruning-json (pruning.jsonl, "
        "the keep masks as bitmaps); repeatable or comma-separated. An image input gets overlay.png and "
        "pruning.png instead of videos.",
        show_default=",".join(DEFAULT_FORMATS))] = None,
    output_dir: Annotated[Path, typer.Option(
        "--output-dir", "-o", help="Outputs of input NAME go to OUTPUT_DIR/NAME/, or NAME-2, NAME-3, ... when "
        "an earlier run is there (see --exist-ok).")] = Path("runs/segment"),
    exist_ok: Annotated[bool, typer.Option(
        "--exist-ok", help="Write into OUTPUT_DIR/NAME/ even if an earlier run is there, replacing that run "
        "whole: its files of formats not written again are removed (only files vppcli wrote).")] = False,
    weights: Weights = None,
    preset: PresetOption = None,
    keep_ratio: KeepRatio = None,
    score_threshold: ScoreThreshold = 0.0,
    classes: Annotated[str | None, typer.Option(help="Comma-separated class names to keep.",
                                                show_default="all")] = None,
    device: DeviceOption = Device.auto,
    dtype: Annotated[DType, typer.Option(help="fp32, or bf16 autocast.")] = DType.fp32,
    threads: Threads = None,
    size: Size = None,
    start: Annotated[int, typer.Option(min=0, help="First frame to process.")] = 0,
    max_frames: Annotated[int | None, typer.Option(min=1, help="Process at most this many frames.",
                                                   show_default="all")] = None,
    stride: Annotated[int, typer.Option(min=1, help="Process every STRIDE-th frame.")] = 1,
    fps: Annotated[float, typer.Option(min=0.001, help="Frame rate of frame directories and images.")] = DEFAULT_FPS,
    backend: Annotated[Backend, typer.Option(
        help="Video reader: auto (decord, else OpenCV), decord, opencv. Both end a damaged video at its first "
        "frame that cannot be decoded, with a warning naming it.")] = Backend.auto,
    reference_noise: Annotated[bool, typer.Option(
        help="Keep the reference's Gumbel noise at test time (stochastic; reproducible with --seed).")] = False,
    seed: Annotated[int, typer.Option(help="Seed of the reference-noise mode.")] = 0,
    quiet: Quiet = False,
    verbose: Verbose = False,
    json_summary: Annotated[bool, typer.Option(
        help="Print the run summary as JSON on stdout (with jsonl: the last line, key \"summary\").")] = False,
) -> None:
    """Segment, classify and track every object in videos, with Video Patch Pruning.

    Runs the bundled model (synthetic shape categories only) unless --weights names another. Writes OUTPUT_DIR/NAME/{overlay.mp4, ytvis.json,
    coco.json, masks/, pruning.mp4, pruning.jsonl} (overlay.png, pruning.png for an image input)
    atomically, into NAME-2/, NAME-3/, ... when an earlier run is in NAME/ (unless --exist-ok);
    jsonl goes to stdout, one line per frame. Progress and the summary go to stderr.
    """
    from vppcli.limits import check_keep_ratio, parse_size

    outcome = RunOutcome()
    try:
        from vppcli.outputs import parse_formats

        chosen = parse_formats(formats) if formats else DEFAULT_FORMATS
        long_side = parse_size(size).long_side if size is not None else None
        check_keep_ratio(keep_ratio)
        class_names = _parse_classes(classes)
        paths = _read_inputs(inputs)
        if not paths:
            raise UsageError("no input: give video files, frame directories or images (or `-` with paths on stdin)")
        if weights is not None or preset is not None:  # neither: _load_model says what to pass
            check_keep_ratio(keep_ratio, model_config(weights, preset.value if preset else None))
        if any(f != "jsonl" for f in chosen):
            from vppcli.outputs.atomic import ensure_output_dir

            ensure_output_dir(output_dir)
        inputs_found = _existing(paths, outcome)
        if not inputs_found:
            raise typer.Exit(outcome.exit_code)
        from vppcli.video import FrameSelection

        selection = FrameSelection(start, max_frames, stride)
        segmenter = _segmenter(weights, preset.value if preset else None, device, dtype, threads, keep_ratio,
                               score_threshold, class_names, long_side, reference_noise, seed)
    except VppError as error:
        raise fail_with(error) from None

    naming = Naming(output_dir, exist_ok)
    try:
        for video_id, path in inputs_found:
            _segment_one(segmenter, path, video_id, chosen, naming, selection, backend.value, fps, quiet, outcome)
        _report(outcome, quiet, json_summary)
    except KeyboardInterrupt:
        error_line("interrupted; outputs of the unfinished video were removed")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except BrokenPipeError:  # `vpp segment ... -f jsonl | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise typer.Exit(EXIT_BROKEN_PIPE) from None
    raise typer.Exit(outcome.exit_code)


def _segmenter(weights: str | None, preset_name: str | None, device: Device, dtype: DType, threads: int | None,
               keep_ratio: float | None, score_threshold: float, classes: list[str] | None, long_side: int | None,
               reference_noise: bool, seed: int) -> Segmenter:
    import torch

    from vppcli.segmenter import Segmenter

    if threads is not None:
        torch.set_num_threads(threads)
    torch_device = resolve_device(device)
    model = _load_model(weights, preset_name, torch_device)
    return Segmenter(model, keep_ratio=keep_ratio, score_threshold=score_threshold, classes=classes,
                     device=torch_device, dtype=dtype.resolve(torch_device), long_side=long_side,
                     reference_noise=reference_noise, seed=seed)


def _segment_one(segmenter: Segmenter, path: str, video_id: int, formats: tuple[str, ...], naming: Naming,
                 selection: FrameSelection, backend: str, image_fps: float, quiet: bool, outcome: RunOutcome) -> None:
    from vppcli.segmenter import SegmentedFrame
    from vppcli.video import open_source

    try:
        with open_source(path, backend, image_fps) as source:  # type: ignore[arg-type]  # a Backend value
            name, video_dir = naming.video(source.info.name)
            with RunProgress(name, selection.count(source.info.num_frames), "frames", quiet) as progress:
                done = 0

                def on_frame(item: SegmentedFrame) -> None:
                    nonlocal done
                    done += 1
                    stats = item.instances.stats
                    progress.advance(done, stats.keep_ratio if stats else None)

                result = segmenter.segment(source, formats=formats, output_dir=video_dir,
                                           selection=selection, video_id=video_id, name=name, stream=sys.stdout,
                                           on_frame=on_frame)
    except VppError as error:
        outcome.fail(path, error)
        return
    outcome.videos.append(result)


def _report(outcome: RunOutcome, quiet: bool, json_summary: bool) -> None:
    summary = outcome.to_dict()
    if json_summary:
        sys.stdout.write(json.dumps({"summary": summary}) + "\n")
        sys.stdout.flush()
    if quiet or not outcome.videos:
        return
    if stderr.is_terminal:
        stderr.print(_table(outcome))
    else:  # logs and pipes: one unwrapped line per video, so paths stay whole and greppable
        for video in outcome.videos:
            stderr.print(Text(f"{video.name}: {video.frames} frames, {video.fps:.2f} fps, keep ratio "
                              f"{video.keep_ratio:.3f}, {video.gflops_per_frame:.1f} GFLOPs/frame, "
                              f"{len(video.tracks)} tracks -> {_written(video)}"), soft_wrap=True, highlight=False)
    for encoder in sorted({v.overlay_encoder for v in outcome.videos if v.overlay_encoder}):
        stderr.print(Text(f"overlay encoder: {encoder}"), soft_wrap=True)
    if outcome.failures:
        stderr.print(f"{len(outcome.failures)} of {len(outcome.failures) + len(outcome.videos)} inputs failed")


def _written(video: VideoResult) -> str:
    return ", ".join(sorted({str(p.parent) + "/" for p in video.outputs})) or "-"


def _table(outcome: RunOutcome) -> Table:
    table = Table(title="vpp segment", title_justify="left")
    for column in ("video", "frames", "fps", "keep ratio", "GFLOPs/frame", "tracks", "written to"):
        table.add_column(column, justify="left" if column in ("video", "written to") else "right",
                         overflow="fold")
    for video in outcome.videos:
        table.add_row(Text(video.name), str(video.frames), f"{video.fps:.2f}", f"{video.keep_ratio:.3f}",
                      f"{video.gflops_per_frame:.1f}", str(len(video.tracks)), Text(_written(video)))
    return table
