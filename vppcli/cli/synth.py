"""`vpp synth`: generate a synthetic YouTube-VIS dataset with exact ground truth."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn
from rich.text import Text

from vppcli.cli.app import app, error_line, fail_with, stderr
from vppcli.cli.options import Quiet, Verbose
from vppcli.errors import EXIT_CODES_HELP, EXIT_INTERRUPTED, UsageError, VppError

if TYPE_CHECKING:  # imported when the command runs, not for --help
    from vppcli.synth import SynthConfig, SynthSummary

DEFAULT_WORKERS = min(os.cpu_count() or 1, 2)


@app.command("synth", epilog=EXIT_CODES_HELP)
def synth(
    output_dir: Annotated[Path, typer.Argument(
        help="Dataset directory: SPLIT/instances.json and SPLIT/JPEGImages/ go here.", show_default=False)],
    videos: Annotated[int, typer.Option(help="Videos in the split.")] = 100,
    frames: Annotated[int, typer.Option(help="Frames per video.")] = 24,
    size: Annotated[str, typer.Option(help="Frame size HEIGHTxWIDTH.")] = "240x320",
    seed: Annotated[int, typer.Option(
        help="Dataset seed; video i of split s is drawn from SeedSequence([seed, split code, i]).")] = 0,
    split: Annotated[str, typer.Option(help="Split to write: train or valid.")] = "train",
    valid_videos: Annotated[int | None, typer.Option(
        help="Also write a valid split of this many videos (with --split train).")] = None,
    objects: Annotated[str, typer.Option(help="Objects per video, MIN-MAX or N.")] = "2-5",
    speed: Annotated[float, typer.Option(help="Factor on object and camera speed (0: static).")] = 1.0,
    occlusion: Annotated[float, typer.Option(
        help="Chance in [0, 1] for each object after the first to cross another's path.")] = 0.5,
    reappear: Annotated[float, typer.Option(
        help="Chance in [0, 1] that one object of a video vanishes for 2-4 frames and comes back.")] = 0.5,
    jpeg_quality: Annotated[int, typer.Option(help="JPEG quality of the frames, 1-100.")] = 90,
    backgrounds: Annotated[str, typer.Option(
        help="photos (scikit-image's sample photographs, needs vppcli[synth]), procedural, or auto.")] = "auto",
    mp4: Annotated[bool, typer.Option(help="Also write SPLIT/videos/NAME.mp4 per video (for demos).")] = False,
    workers: Annotated[int, typer.Option(help="Worker processes.")] = DEFAULT_WORKERS,
    overwrite: Annotated[bool, typer.Option(help="Replace splits that already exist.")] = False,
    quiet: Quiet = False,
    json_summary: Annotated[bool, typer.Option(help="Print the summary as JSON on stdout.")] = False,
    verbose: Verbose = False,
) -> None:
    """Generate a synthetic YouTube-VIS dataset: textured shapes of 10 categories moving over
    photographs, with occlusions, objects entering, leaving and reappearing, camera motion,
    blur, noise and JPEG compression. The ground truth is exact; the same seed gives the same
    bytes. Read it with `vpp eval --dataset ytvis21 --data-root OUTPUT_DIR --split SPLIT`.
    """
    from vppcli.synth import SynthConfig, generate

    try:
        height, width = _parse_size(size)
        low, high = _parse_objects(objects)
        splits = [(split, videos)]
        if valid_videos is not None:
            if split != "train":
                raise UsageError("--valid-videos adds a valid split to --split train; drop one of them")
            splits.append(("valid", valid_videos))
        configs = [SynthConfig(videos=count, frames=frames, height=height, width=width, seed=seed, split=name,
                               min_objects=low, max_objects=high, speed=speed, occlusion=occlusion,
                               reappear=reappear, jpeg_quality=jpeg_quality,
                               backgrounds=backgrounds)  # type: ignore[arg-type]  # checked by SynthConfig
                   for name, count in splits]
        with _progress(quiet) as progress:
            tasks: dict[str, TaskID] = {c.split: progress.add_task(c.split, total=c.videos) for c in configs}

            def on_progress(name: str, done: int, total: int) -> None:
                progress.update(tasks[name], completed=done, total=total)

            summary = generate(output_dir, configs, workers=workers, overwrite=overwrite, mp4=mp4,
                               on_progress=on_progress)
    except VppError as error:
        raise fail_with(error) from None
    except KeyboardInterrupt:
        error_line("interrupted; nothing was written")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    _report(summary, configs[0], quiet, json_summary)


def _parse_size(text: str) -> tuple[int, int]:
    try:
        height, width = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise UsageError(f"--size must look like HEIGHTxWIDTH (e.g. 240x320), got {text!r}") from None
    return height, width


def _parse_objects(text: str) -> tuple[int, int]:
    try:
        parts = [int(part) for part in text.split("-")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2):
        raise UsageError(f"--objects must look like MIN-MAX (e.g. 2-5) or N, got {text!r}")
    return parts[0], parts[-1]


def _progress(quiet: bool) -> Progress:
    return Progress(TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(),
                    TimeRemainingColumn(), console=stderr, transient=True, disable=quiet or not stderr.is_terminal)


def _report(summary: SynthSummary, config: SynthConfig, quiet: bool, json_summary: bool) -> None:
    if json_summary:
        sys.stdout.write(json.dumps({"summary": summary.to_dict()}) + "\n")
        sys.stdout.flush()
    if quiet:
        return
    for part in summary.splits:
        rate = part.videos / max(part.seconds, 1e-9)
        stderr.print(Text(f"{part.split}: {part.videos} videos x {config.frames} frames "
                          f"({config.height}x{config.width}), {part.instances} instances -> {part.directory} "
                          f"in {part.seconds:.1f} s ({rate:.2f} videos/s, {summary.backgrounds} backgrounds)"),
                     soft_wrap=True)
