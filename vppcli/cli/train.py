"""`vpp train`: train a dense or VPP-pruned model on YouTube-VIS-format data."""

from __future__ import annotations

import dataclasses
import logging
import shlex
import signal
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.text import Text

from vppcli.cli.app import app, error_line, fail_with, stderr
from vppcli.cli.options import Quiet, Verbose
from vppcli.errors import EXIT_CODES_HELP, EXIT_INTERRUPTED, UsageError, VppError

logger = logging.getLogger(__name__)

# CLI option name -> TrainConfig field, for the options a resumed run may take from the command line.
_FIELDS = {
    "data": "data", "images": "images", "stage": "stage", "preset": "preset", "init": "init", "steps": "steps",
    "size": "size", "multiscale": "multiscale", "clip_frames": "clip_frames", "accumulate": "accumulate",
    "lr": "lr", "backbone_lr_mult": "backbone_lr_mult", "weight_decay": "weight_decay",
    "warmup": "warmup_steps", "clip_grad": "clip_grad_norm", "freeze": "freeze", "target_pkr": "target_pkr",
    "map_keep": "map_keep_ratio", "sm_keep": "selective_keep_ratios", "amp": "amp", "device": "device",
    "threads": "threads", "seed": "seed", "save_every": "save_every", "log_every": "log_every",
    "val": "val_annotations", "val_images": "val_images", "val_every": "val_every",
    "val_videos": "val_videos", "no_flip": "flip", "class_weight": "class_weight",
}


def _given_on_command_line(ctx: typer.Context, name: str) -> bool:
    source = ctx.get_parameter_source(name)
    return source is not None and source.name == "COMMANDLINE"


def _split(path: str | None, images: str | None, option: str, images_option: str) -> tuple[str | None, str | None]:
    """(annotation file, frames directory) of a split given as a directory or as a file."""
    if path is None:
        return None, images
    if Path(path).is_dir():
        if images is not None:
            raise UsageError(f"{option} {path} is a split directory (frames in its JPEGImages/); drop {images_option}")
        return str(Path(path) / "instances.json"), str(Path(path) / "JPEGImages")
    if images is None:
        raise UsageError(f"{option} {path} is an annotation file: give its frames directory with {images_option}")
    return path, images


def _numbers(text: str | None, kind: type, option: str) -> tuple[Any, ...] | None:
    if text is None:
        return None
    try:
        values = tuple(kind(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise UsageError(f"{option}: expected comma-separated numbers, got {text!r}") from None
    if not values:
        raise UsageError(f"{option}: give at least one value")
    return values


@app.command(epilog=EXIT_CODES_HELP)
def train(
    ctx: typer.Context,
    output: Annotated[Path, typer.Option("--output", "-o", help="Run directory (checkpoints, metrics).")],
    data: Annotated[str | None, typer.Option(
        help="Training split: a directory with instances.json and JPEGImages/ (as `vpp synth` writes), "
        "or a YouTube-VIS annotation file (then give --images).")] = None,
    images: Annotated[str | None, typer.Option(help="Frames directory, when --data is an annotation file.")] = None,
    stage: Annotated[str, typer.Option(help="dense (pruning off) or vpp (sparse fine-tuning).")] = "dense",
    preset: Annotated[str, typer.Option(help="Architecture: compact, tiny or small.")] = "compact",
    init: Annotated[str | None, typer.Option(
        help="Start from: a vppcli checkpoint, an official .pth, or a timm-style ViT state dict (.safetensors).")] = None,
    steps: Annotated[int, typer.Option(help="Optimizer steps.")] = 20000,
    size: Annotated[int, typer.Option(help="Long side of training frames (multiple of 32).")] = 256,
    multiscale: Annotated[str | None, typer.Option(help="Comma-separated long sides drawn per clip.")] = None,
    clip_frames: Annotated[int, typer.Option(help="Frames per clip (0: the stage's).",
                                             show_default="2 dense, 3 vpp")] = 0,
    accumulate: Annotated[int, typer.Option(help="Clips per optimizer step.")] = 1,
    lr: Annotated[float, typer.Option(help="AdamW learning rate.")] = 1e-4,
    backbone_lr_mult: Annotated[float, typer.Option(help="LR multiplier of the backbone (1 when training from scratch).")] = 0.1,
    weight_decay: Annotated[float, typer.Option(help="AdamW weight decay.")] = 0.05,
    warmup: Annotated[int, typer.Option(help="Linear warm-up steps.")] = 10,
    clip_grad: Annotated[float, typer.Option(help="Gradient L2 max-norm (0 = off).")] = 0.01,
    class_weight: Annotated[float, typer.Option(
        min=0.0, help="Weight of the classification loss (mask and dice: 5 each).")] = 2.0,
    freeze: Annotated[str | None, typer.Option(
        help="Comma-separated parts to freeze: backbone, vit, adapter, pixel_decoder, decoder, head.")] = None,
    target_pkr: Annotated[float | None, typer.Option(help="VPP: mean patch keep ratio to train for (e.g. 0.5).")] = None,
    map_keep: Annotated[float | None, typer.Option(help="VPP: Map-SM keep ratio (overrides --target-pkr's).")] = None,
    sm_keep: Annotated[str | None, typer.Option(help="VPP: the three selective modules' keep targets, e.g. 0.42,0.294,0.206.")] = None,
    amp: Annotated[str, typer.Option(help="off or bf16 (autocast; fast on GPUs and CPUs with native bf16).")] = "off",
    device: Annotated[str, typer.Option(help="cpu, cuda or auto.")] = "cpu",
    threads: Annotated[int | None, typer.Option(min=1, help="CPU threads.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the weights, the data stream and every random draw.")] = 0,
    save_every: Annotated[int, typer.Option(help="Save last.safetensors every N steps.")] = 500,
    log_every: Annotated[int, typer.Option(help="Append to metrics.jsonl every N steps.")] = 10,
    val: Annotated[str | None, typer.Option(
        help="Validation split with ground truth (directory or annotation file, as --data).")] = None,
    val_images: Annotated[str | None, typer.Option(help="Validation frames, when --val is an annotation file.")] = None,
    val_every: Annotated[int, typer.Option(help="Validate every N steps (0: at the end only).")] = 0,
    val_videos: Annotated[int | None, typer.Option(min=1, help="Validate on the first N videos only.")] = None,
    no_flip: Annotated[bool, typer.Option("--no-flip", help="No horizontal flips.")] = False,
    resume: Annotated[bool, typer.Option(help="Continue the run in --output from its last checkpoint.")] = False,
    tensorboard: Annotated[bool, typer.Option(help="Also write TensorBoard logs (needs tensorboard).")] = False,
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    """Train a model: dense first, then VPP fine-tuning from the dense checkpoint.

    Writes OUTPUT/{last,best}.safetensors (usable with --weights), their .state.pt (for
    --resume), args.json and metrics.jsonl. Ctrl-C or SIGTERM saves the last completed step.
    """
    from vppcli.training.checkpoint import load_state
    from vppcli.training.config import TrainConfig
    from vppcli.training.run import run_training

    values = {
        "data": data, "images": images, "stage": stage, "preset": preset, "init": init, "steps": steps,
        "size": size, "clip_frames": clip_frames, "accumulate": accumulate, "lr": lr,
        "backbone_lr_mult": backbone_lr_mult, "weight_decay": weight_decay, "warmup": warmup,
        "clip_grad": clip_grad, "class_weight": class_weight, "target_pkr": target_pkr, "map_keep": map_keep,
        "amp": amp, "device": device,
        "threads": threads, "seed": seed, "save_every": save_every, "log_every": log_every,
        "val": val, "val_images": val_images, "val_every": val_every,
        "val_videos": val_videos, "no_flip": not no_flip,
    }
    try:
        values["multiscale"] = _numbers(multiscale, int, "--multiscale") or ()
        values["sm_keep"] = _numbers(sm_keep, float, "--sm-keep")
        values["freeze"] = tuple(p.strip() for p in freeze.split(",") if p.strip()) if freeze else ()
        if amp not in ("off", "bf16"):
            raise UsageError(f"--amp must be off or bf16, got {amp!r}")
        values["data"], values["images"] = _split(data, images, "--data", "--images")
        values["val"], values["val_images"] = _split(val, val_images, "--val", "--val-images")
        if resume:
            stored = load_state(output).config
            given = {_FIELDS[name]: value for name, value in values.items()
                     if _given_on_command_line(ctx, name)}
            config = dataclasses.replace(stored, **given)
        else:
            if values["data"] is None:
                raise UsageError("--data is required (or --resume an existing run)")
            config = TrainConfig(output=str(output), **{_FIELDS[name]: value for name, value in values.items()})
    except VppError as error:
        raise fail_with(error) from None

    progress = _Progress(quiet)
    command = shlex.join(["vpp", *sys.argv[1:]])
    # Background runs (nohup, job schedulers) are stopped with SIGTERM, and a shell starts them
    # with SIGINT ignored: treat SIGTERM like Ctrl-C, so either saves the last completed step.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        outcome = run_training(config, resume=resume, command=command, tensorboard=tensorboard,
                               on_step=progress.update)
    except VppError as error:
        raise fail_with(error) from None
    except KeyboardInterrupt:
        error_line(f"interrupted; the last completed step is saved in {output}; continue with --resume")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    finally:
        signal.signal(signal.SIGTERM, previous)
    if not quiet:
        best = f"; best {outcome.best} (AP {100 * outcome.best_metric:.1f})" if outcome.best and outcome.best_metric else ""
        stderr.print(Text(f"trained {outcome.steps} steps: {outcome.last}{best}"), soft_wrap=True)


class _Progress:
    """One plain line every few seconds (terminals and logs alike: training runs for hours and
    its lines are worth keeping)."""

    INTERVAL = 10.0

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self._last = 0.0
        self._started: float | None = None
        self._first_step = 0

    def update(self, trainer: Any, result: Any) -> None:
        now = time.monotonic()
        if self._started is None:  # the first step's own time counts, so the rate is never infinite
            self._started, self._first_step = now - result.seconds, result.step - 1
        if self.quiet or (now - self._last < self.INTERVAL and result.step != trainer.config.steps):
            return
        self._last = now
        done = result.step - self._first_step
        rate = done / max(now - self._started, 1e-9)
        remaining = (trainer.config.steps - result.step) / rate if rate > 0 else 0.0
        clips = rate * result.clips
        stderr.print(Text(
            f"step {result.step}/{trainer.config.steps}  loss {result.loss:.3f}  keep {result.keep_ratio:.3f}  "
            f"lr {result.lr:.2e}  {clips:.2f} clips/s  ETA {_duration(remaining)}"), soft_wrap=True, highlight=False)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
