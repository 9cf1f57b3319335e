"""`vpp segment`: segment, classify and track the objects of videos; write overlays, JSON, masks.

Everything that can be checked without the model is checked before it is loaded (options, that
the inputs open, that the output directory is writable); torch and the writers are imported
only then, so `vpp segment --help` stays fast. With `--shards K` (or under torchrun) the inputs
are spread over processes; `segment_runs` keeps the outputs those of one process.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
from dataclasses import dataclass
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
    ReuseBudget,
    ScoreThreshold,
    Size,
    Threads,
    Verbose,
    Weights,
)
from vppcli.cli.segment_runs import (
    Naming,
    Plan,
    RunOutcome,
    ShardOutcome,
    VideoSettings,
    merge,
    plan,
    read_inputs,
    segment_inputs,
)
from vppcli.errors import EXIT_BROKEN_PIPE, EXIT_CODES_HELP, EXIT_INTERRUPTED, UsageError, VppError

if TYPE_CHECKING:
    import torch

    from vppcli.distributed import Rank
    from vppcli.model.rovis import VppModel
    from vppcli.segmenter import Segmenter, VideoResult

DEFAULT_FORMATS = ("overlay", "ytvis")
DEFAULT_FPS = 30.0  # = vppcli.video.DEFAULT_FPS (tests check), not imported: it would import OpenCV for --help
FORMAT_CHOICES = "overlay|ytvis|coco|png|jsonl|pruning|pruning-json"


def _parse_classes(classes: str | None) -> list[str] | None:
    if classes is None:
        return None
    names = [c.strip() for c in classes.split(",") if c.strip()]
    if not names:
        raise UsageError(f"--classes names no class ({classes!r}); give names like person,dog, or omit it")
    return names


def _load_model(weights: str | None, preset_name: str | None, device: torch.device) -> VppModel:
    return load_model(weights, preset_name, device)


@dataclass(frozen=True)
class ModelSettings:
    """How every process builds its segmenter (picklable: sharded workers get it whole)."""

    weights: str | None
    preset: str | None
    dtype: DType
    threads: int | None
    keep_ratio: float | None
    score_threshold: float
    classes: list[str] | None
    long_side: int | None
    reference_noise: bool
    seed: int
    reuse: float | None = None  # temporal-reuse budget, None = off


@dataclass(frozen=True)
class ShardJob:
    """What a rank of a sharded run needs: its inputs are `plan.inputs[rank::world]`."""

    plan: Plan
    model: ModelSettings
    device: str
    video: VideoSettings
    log_level: int


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
    reuse: ReuseBudget = None,
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
    shards: Annotated[int, typer.Option(
        min=1, help="Worker processes sharing the inputs (a local torch.distributed group); or launch with "
        "torchrun. The outputs are those of one process.")] = 1,
    quiet: Quiet = False,
    verbose: Verbose = False,
    json_summary: Annotated[bool, typer.Option(
        help="Print the run summary as JSON on stdout (with jsonl: the last line, key \"summary\").")] = False,
) -> None:
    """Segment, classify and track every object in videos, with Video Patch Pruning.

    Needs a model: --weights FILE_OR_NAME, or --preset NAME for random weights (testing only);
    without either it runs the bundled model vpp-compact where installed (not shipped yet). Writes OUTPUT_DIR/NAME/{overlay.mp4, ytvis.json,
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
        paths = read_inputs(inputs)
        if not paths:
            raise UsageError("no input: give video files, frame directories or images (or `-` with paths on stdin)")
        if weights is not None or preset is not None:  # neither: _load_model says what to pass
            check_keep_ratio(keep_ratio, model_config(weights, preset.value if preset else None))
        from vppcli.distributed import check_shards

        check_shards(shards)
        if any(f != "jsonl" for f in chosen):
            from vppcli.outputs.atomic import ensure_output_dir

            ensure_output_dir(output_dir)
        from vppcli.video import FrameSelection

        video = VideoSettings(chosen, FrameSelection(start, max_frames, stride), backend.value, fps, quiet)
        model = ModelSettings(weights, preset.value if preset else None, dtype, threads, keep_ratio, score_threshold,
                              class_names, long_side, reference_noise, seed, reuse)
    except VppError as error:
        raise fail_with(error) from None

    try:
        results = _run(paths, Naming(output_dir, exist_ok), video, model, device, shards, outcome)
        if results is None:
            return  # a torchrun rank other than 0: rank 0 reports
        merge(outcome, results)
        _report(outcome, quiet, json_summary)
    except VppError as error:
        raise fail_with(error) from None
    except KeyboardInterrupt:
        error_line("interrupted; outputs of the unfinished videos were removed")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except BrokenPipeError:  # `vpp segment ... -f jsonl | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise typer.Exit(EXIT_BROKEN_PIPE) from None
    raise typer.Exit(outcome.exit_code)


def _run(paths: list[str], naming: Naming, video: VideoSettings, model: ModelSettings, device: Device,
         shards: int, outcome: RunOutcome) -> list[ShardOutcome] | None:
    """Plan, then segment in this process, in `shards` local workers or as a torchrun rank. The
    ranks' outcomes in rank order (on rank 0 or in the launcher), None on the other torchrun ranks.
    Exits when no input opened (with the code of the first that did not)."""
    from vppcli.distributed import env_rank, from_root, process_group, spawn

    rank = env_rank()
    if rank.world > 1:
        with process_group(rank):
            planned = from_root(rank, lambda: plan(paths, naming, video.backend, video.image_fps, outcome))
            _exit_if_empty(planned)
            return _rank_main(rank, ShardJob(planned, model, device.value, video, logging.getLogger().level))
    planned = plan(paths, naming, video.backend, video.image_fps, outcome)
    _exit_if_empty(planned)
    if shards > 1:
        job = ShardJob(planned, model, device.value, video, logging.getLogger().level)
        return spawn(_worker, (job,), shards, model.threads)
    segmenter = _segmenter(model, resolve_device(device))
    return [segment_inputs(segmenter, planned.inputs, video, spool=False)]  # jsonl went to stdout as it came


def _exit_if_empty(planned: Plan) -> None:
    if not planned.inputs:  # every input failed to open, and was reported
        raise typer.Exit(planned.failures[0].exit_code)


def _worker(rank: Rank, job: ShardJob) -> list[ShardOutcome] | None:
    """One process of `--shards`: logs as the command does, then runs its rank."""
    from vppcli.cli.app import main as configure_logging

    configure_logging(version=False, verbose=False)
    logging.getLogger().setLevel(job.log_level)  # -q/-v as the launcher was given them
    return _rank_main(rank, job)


def _rank_main(rank: Rank, job: ShardJob) -> list[ShardOutcome] | None:
    """Segment this rank's inputs (round robin in input order) with jsonl spooled for the merge;
    every rank's outcome on rank 0. Progress bars on rank 0 only: several would garble a terminal."""
    from vppcli.distributed import gather_to_root, rank_device

    mine = job.plan.inputs[rank.rank::rank.world]
    shard = ShardOutcome()
    if mine:  # more ranks than inputs: the idle ones load no model
        if not rank.is_root:
            logging.disable(logging.WARNING)  # rank 0 tells about the model; the same lines once is enough
        try:
            segmenter = _segmenter(job.model, rank_device(job.device, rank.local_rank))
        finally:
            logging.disable(logging.NOTSET)
        video = dataclasses.replace(job.video, quiet=job.video.quiet or not rank.is_root)
        shard = segment_inputs(segmenter, mine, video, spool=True)
    return gather_to_root(rank, shard)


def _segmenter(model: ModelSettings, device: torch.device) -> Segmenter:
    import torch

    from vppcli.model.temporal_reuse import TemporalReuse
    from vppcli.segmenter import Segmenter

    if model.threads is not None:
        torch.set_num_threads(model.threads)
    loaded = _load_model(model.weights, model.preset, device)
    return Segmenter(loaded, keep_ratio=model.keep_ratio, score_threshold=model.score_threshold,
                     classes=model.classes, device=device, dtype=model.dtype.resolve(device),
                     long_side=model.long_side, reference_noise=model.reference_noise, seed=model.seed,
                     reuse=None if model.reuse is None else TemporalReuse(budget=model.reuse))


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
