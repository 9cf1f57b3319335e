"""`vpp eval`: YouTube-VIS 2019/2021 evaluation (official video AP), submission files, efficiency."""

from __future__ import annotations

import json
import logging
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from vppcli.cli.app import Device, DType, app, error_line, fail_with, stdout
from vppcli.cli.options import DeviceOption, KeepRatio, PresetOption, Quiet, ScoreThreshold, Size, Threads, Verbose, Weights
from vppcli.cli.models import model_config
from vppcli.cli.progress import RunProgress
from vppcli.errors import EXIT_CODES_HELP, EXIT_INTERRUPTED, InputError, UsageError, VppError

if TYPE_CHECKING:  # imported when a command runs: `vpp eval --help` must not import torch
    from vppcli.efficiency import EfficiencyReport
    from vppcli.evaluation import runner
    from vppcli.evaluation.dataset import Video, YtvisDataset
    from vppcli.evaluation.metric import VideoAP

DEFAULT_OUTPUT_DIR = Path("runs/eval")


class Dataset(str, Enum):
    ytvis19 = "ytvis19"
    ytvis21 = "ytvis21"

logger = logging.getLogger(__name__)


@app.command("eval", epilog=EXIT_CODES_HELP)
def evaluate(
    dataset: Annotated[Dataset | None, typer.Option(help="YouTube-VIS 2019 or 2021 (with --data-root).",
                                                    show_default=False)] = None,
    data_root: Annotated[Path | None, typer.Option(
        help="Directory holding ytvis_2021/ (detectron2 layout) or youtube_vis_2021/ (mmtrack layout).")] = None,
    split: Annotated[str, typer.Option(
        help="Split: train, valid, test, or your own (e.g. a local validation split).")] = "valid",
    annotations: Annotated[Path | None, typer.Option(help="Annotation JSON (overrides discovery).")] = None,
    images: Annotated[Path | None, typer.Option(help="JPEGImages directory (overrides discovery).")] = None,
    predictions: Annotated[Path | None, typer.Option(
        help="Score this results.json (or results.zip) instead of running the model.")] = None,
    weights: Weights = None,
    preset: PresetOption = None,
    allow_class_mismatch: Annotated[bool, typer.Option(
        help="Evaluate a checkpoint whose classes differ from the dataset's, on the classes both share.")] = False,
    keep_ratio: KeepRatio = None,
    size: Size = None,
    score_threshold: ScoreThreshold = 0.0,
    device: DeviceOption = Device.auto,
    dtype: Annotated[DType, typer.Option(help="fp32, bf16 autocast, or auto (bf16 where it is native).")] = DType.fp32,
    threads: Threads = None,
    output_dir: Annotated[Path | None, typer.Option(
        "--output-dir", "-o", help="Where results.json, results.zip, metrics.json and predictions/ go "
        "(with --predictions: metrics.json, only when given).", show_default=str(DEFAULT_OUTPUT_DIR))] = None,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted run in --output-dir.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Discard an earlier run's predictions in --output-dir.")] = False,
    limit: Annotated[int | None, typer.Option(min=1, help="Only the first N videos (ascending id).")] = None,
    videos: Annotated[str | None, typer.Option(help="Only these video ids, comma-separated.")] = None,
    shards: Annotated[int, typer.Option(
        min=1, help="Worker processes (a local torch.distributed group); or launch with torchrun.")] = 1,
    per_class: Annotated[bool, typer.Option(help="Also print the AP of every category.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print metrics.json on stdout instead of tables.")] = False,
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    """Evaluate on YouTube-VIS 2019/2021: official video AP, submission files, efficiency.

    Runs the model over every video of a split and writes results.json and results.zip (for the
    evaluation server) into --output-dir; with ground truth it prints AP/AR as the official
    evaluation computes them. Patch keep ratio, GFLOPs, frames/s and peak memory are always
    reported. Videos are saved as they finish: an interrupted run continues with --resume.
    --predictions scores an existing results file instead of running the model.
    """
    from vppcli.evaluation import runner
    from vppcli.evaluation.dataset import load_dataset, locate_split
    from vppcli.limits import check_keep_ratio, parse_size

    outcome: runner.RunOutcome | None = None
    try:
        video_ids = _parse_ids(videos)
        long_side = parse_size(size).long_side if size is not None else None
        check_keep_ratio(keep_ratio)
        annotation_file, image_root = locate_split(dataset.value if dataset else None, data_root, split, annotations, images,
                                                   need_images=predictions is None)
        data = load_dataset(annotation_file, image_root)
        chosen = data.select(video_ids, limit)
        # --split names the split only when it was used to find the annotation file.
        source = {"dataset": dataset.value if dataset else None, "split": split if annotations is None else None,
                  "annotations": str(annotation_file)}
        if predictions is not None:
            payload, scored = _score_file(data, source, predictions, output_dir,
                                          chosen if video_ids or limit else None)
        else:
            preset_name = preset.value if preset else None
            check_keep_ratio(keep_ratio, model_config(weights, preset_name))
            settings = runner.RunSettings(runner.ModelSpec(weights, preset_name), keep_ratio, long_side,
                                          score_threshold, dtype.value, allow_class_mismatch, device.value, threads)
            found = _run(data, source, chosen, settings, output_dir or DEFAULT_OUTPUT_DIR, resume, overwrite, shards,
                         quiet)
            if found is None:
                return  # a torchrun rank other than 0: rank 0 reports
            payload, scored, outcome = found
    except VppError as error:
        raise fail_with(error) from None
    except KeyboardInterrupt:
        error_line("interrupted; finished videos are kept in predictions/, continue with --resume")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    if as_json:
        stdout.print_json(json.dumps(payload))
        return
    if not quiet:
        _print_report(payload, scored, outcome, per_class)


def _score_file(data: YtvisDataset, source: dict[str, Any], predictions: Path, output_dir: Path | None,
                chosen: tuple[Video, ...] | None) -> tuple[dict[str, Any], VideoAP]:
    from vppcli.evaluation.dataset import write_json
    from vppcli.evaluation.metric import evaluate_results, load_results

    _require_ground_truth(data)
    scored = evaluate_results(data.data, load_results(predictions), None if chosen is None else [v.id for v in chosen])
    payload = {**source, "predictions": str(predictions), **scored.to_dict()}
    if output_dir is not None:
        payload["metrics_file"] = str(write_json(output_dir / "metrics.json", payload, indent=2))
    return payload, scored


def _run(data: YtvisDataset, source: dict[str, Any], chosen: tuple[Video, ...], settings: runner.RunSettings,
         output_dir: Path, resume: bool, overwrite: bool,
         shards: int, quiet: bool) -> tuple[dict[str, Any], VideoAP | None, runner.RunOutcome] | None:
    """Run (or join, under torchrun) the evaluation; the report on rank 0, None on the other ranks."""
    import torch

    from vppcli.distributed import check_shards, env_rank
    from vppcli.evaluation import runner
    from vppcli.evaluation.dataset import write_json
    from vppcli.evaluation.metric import evaluate_results

    if resume and overwrite:
        raise UsageError("give either --resume or --overwrite, not both")
    check_shards(shards)
    data.check_frames(chosen)
    job = runner.make_job(data, [v.id for v in chosen], settings, output_dir, resume, overwrite)
    rank = env_rank().rank
    if settings.model.preset is not None and rank == 0:
        logger.warning("--preset %s: random weights, the scores are meaningless (for testing the pipeline)",
                       settings.model.preset)
    if not data.has_ground_truth and rank == 0:
        logger.warning("%s has no ground truth (as the official valid/test splits): writing the submission files "
                       "only; upload results.zip to the evaluation server for AP", data.annotation_file)
    # Loaded here (on the CPU) so that a class mismatch is refused before any worker starts.
    loaded = runner.load_eval_model(settings, data.categories, torch.device("cpu"))
    with RunProgress("eval", len(job.tasks), "videos", quiet or rank != 0) as progress:

        def on_progress(done: int, total: int) -> None:
            progress.advance(done, total=total)

        if shards > 1:
            outcome = runner.run_sharded(job, shards, on_progress)
        else:
            outcome = runner.run(job, on_progress, loaded)
    if outcome is None:
        return None
    video_ids = [v.id for v in chosen]
    scored = evaluate_results(data.data, outcome.results, video_ids) if data.has_ground_truth else None
    payload: dict[str, Any] = {
        **source, "images": str(data.image_root), "videos": len(chosen),
        "ground_truth": data.has_ground_truth,
        **(scored.to_dict() if scored is not None else {"metrics": None, "per_category": None}),
        "efficiency": outcome.efficiency.to_dict(), "settings": job.fingerprint(),
        "resumed_videos": outcome.resumed, "results": str(outcome.files[0]), "submission": str(outcome.files[1]),
    }
    payload["metrics_file"] = str(write_json(output_dir / "metrics.json", payload, indent=2))
    return payload, scored, outcome


def _require_ground_truth(data: YtvisDataset) -> None:
    if not data.has_ground_truth:
        raise InputError(f"{data.annotation_file} has no ground truth (as the official valid/test splits), so it "
                         "cannot score results: submit results.zip to the evaluation server, or score on a split "
                         "made from train")


def _parse_ids(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        ids = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UsageError(f"--videos must be comma-separated video ids, got {text!r}") from None
    if not ids:
        raise UsageError("--videos is empty")
    return ids


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _print_report(payload: dict[str, Any], scored: VideoAP | None, outcome: runner.RunOutcome | None,
                  per_class: bool) -> None:
    from vppcli.evaluation.metric import METRIC_NAMES

    if scored is not None:
        stdout.print(f"YouTube-VIS video AP/AR (%): {scored.num_videos} videos, {scored.num_ground_truth} "
                     f"objects, {scored.num_results} predictions")
        # Two rows of six fit an 80-column terminal; one row of twelve would be truncated.
        for names in (METRIC_NAMES[:6], METRIC_NAMES[6:]):
            table = Table()
            for name in names:
                table.add_column(name, justify="right", min_width=6)
            table.add_row(*(_percent(scored.metrics[name]) for name in names))
            stdout.print(table)
        if per_class:
            classes = Table(title="AP per category (%)", title_justify="left")
            classes.add_column("category")
            classes.add_column("AP", justify="right")
            for name, value in scored.per_category.items():
                classes.add_row(Text(name), _percent(value))  # a dataset's name, not markup
            stdout.print(classes)
    if outcome is not None:
        _print_efficiency(outcome.efficiency)
        # Paths are the user's: printed without markup, so `[...]` in them is neither lost nor an error.
        stdout.print(f"submission: {payload['submission']}  (results.json: {payload['results']})", markup=False)
    if "metrics_file" in payload:
        stdout.print(f"metrics: {payload['metrics_file']}", markup=False)


def _print_efficiency(report: EfficiencyReport) -> None:
    table = Table(title="efficiency", title_justify="left", show_header=False)
    table.add_column("")
    table.add_column("", justify="right")
    table.add_row("frames", str(report.frames))
    table.add_row("frames / s (one process)", f"{report.fps:.2f}")
    table.add_row("patch keep ratio (PKR)", f"{report.keep_ratio:.3f}")
    table.add_row("keep ratio per block", " ".join(f"{v:.2f}" for v in report.keep_ratio_per_block))
    for part in ("vit_blocks", "backbone", "head", "total"):
        table.add_row(f"GFLOPs / frame, {part.replace('_', ' ')}", f"{report.gflops_per_frame[part]:.2f}")
    table.add_row(f"peak memory MB ({report.peak_memory_kind})", f"{report.peak_memory_mb:.0f}")
    stdout.print(table)


@app.command("eval-split", epilog=EXIT_CODES_HELP)
def eval_split(
    dataset: Annotated[Dataset | None, typer.Option(help="YouTube-VIS 2019 or 2021 (with --data-root).",
                                                    show_default=False)] = None,
    data_root: Annotated[Path | None, typer.Option(help="As for `vpp eval`.")] = None,
    split: Annotated[str, typer.Option(help="The split to divide (it needs ground truth).")] = "train",
    annotations: Annotated[Path | None, typer.Option(help="Annotation JSON (overrides discovery).")] = None,
    val_videos: Annotated[int, typer.Option(min=1, help="Videos to hold out for validation.")] = 300,
    seed: Annotated[int, typer.Option(help="Seed of the random draw (same seed, same split).")] = 0,
    output_dir: Annotated[Path | None, typer.Option(
        "--output-dir", "-o", help="Where local_val.json and local_train.json go.",
        show_default="next to the annotation file")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace existing local_val/local_train files.")] = False,
) -> None:
    """Make a local validation split from train (valid/test have no public ground truth).

    local_val.json holds --val-videos random videos with their annotations, local_train.json the
    rest; frames stay in the train JPEGImages directory."""
    from vppcli.evaluation.dataset import load_dataset, locate_split, split_videos, write_json

    try:
        annotation_file, image_root = locate_split(dataset.value if dataset else None, data_root, split, annotations, need_images=False)
        data = load_dataset(annotation_file, image_root)
        _require_ground_truth(data)
        held_out, rest = split_videos(data.data, val_videos, seed)
        directory = output_dir or annotation_file.parent
        targets = (directory / "local_val.json", directory / "local_train.json")
        existing = [str(t) for t in targets if t.exists()]
        if existing and not overwrite:
            raise UsageError(f"{', '.join(existing)} already exist(s); pass --overwrite to replace")
        for target, part in zip(targets, (held_out, rest)):
            write_json(target, part)
    except VppError as error:
        raise fail_with(error) from None
    frames = f" --images {image_root}" if image_root is not None else " --images .../JPEGImages"
    stdout.print(f"{targets[0]}: {len(held_out['videos'])} videos; {targets[1]}: {len(rest['videos'])} videos",
                 markup=False)
    stdout.print(f"evaluate with: vpp eval --annotations {targets[0]}{frames} --weights ...", markup=False,
                 highlight=False)
