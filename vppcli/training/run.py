"""`run_training`: one training run from a `TrainConfig`, the Python API under `vpp train`.

Run directory:
    args.json                      the TrainConfig (what `--resume` continues)
    last.safetensors / .state.pt   latest weights (a normal vppcli checkpoint) / optimizer + step
    best.safetensors / .state.pt   best validation AP so far (with a validation split)
    metrics.jsonl                  one line per logged step (and validation results)
    val/                           the latest validation predictions
    tensorboard/                   with --tensorboard
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel

from vppcli.checkpoints.format import default_input_size, load_model, read_metadata
from vppcli.config import PreprocessConfig, VppConfig, preset
from vppcli.distributed import rank_device
from vppcli.errors import CheckpointError, InputError, UsageError
from vppcli.evaluation.dataset import load_dataset
from vppcli.model.rovis import build_model
from vppcli.outputs.atomic import AtomicFile, ensure_output_dir
from vppcli.training import checkpoint
from vppcli.training.clips import ClipConfig
from vppcli.training.config import TrainConfig
from vppcli.training.data import TrainingDataset
from vppcli.training.hooks import CallbackHook, CheckpointHook, MetricsLogHook, RunRecord, ValidationHook
from vppcli.training.init import InitReport, initialise
from vppcli.training.loop import Hook, StepResult, Trainer
from vppcli.training.objective import ClipObjective
from vppcli.training.optim import apply_freeze, build_optimizer

log = logging.getLogger(__name__)

StepCallback = Callable[[Trainer, StepResult], None]


@dataclass(frozen=True)
class TrainingOutcome:
    run_dir: Path
    steps: int  # completed steps
    last: Path
    best: Path | None
    best_metric: float | None
    init: InitReport | None
    resumed_from: int | None


def run_training(config: TrainConfig, *, resume: bool = False, command: str = "", tensorboard: bool = False,
                 on_step: StepCallback | None = None, on_ready: Callable[[Trainer], None] | None = None,
                 ) -> TrainingOutcome:
    """Train (or continue) the run `config.output`. Rank-aware under torchrun (DDP)."""
    run_dir = Path(config.output)
    state = None
    if resume:
        state = checkpoint.load_state(run_dir)
        changed = state.config.differences(config)
        if changed:
            raise UsageError(f"--resume: {', '.join(changed)} differ from the run in {run_dir}; "
                             "only --steps, --save-every, --log-every, --val-every, --device and --threads may change")
    _check_inputs(config)
    world, rank, local_rank = (int(os.environ.get(k, d)) for k, d in
                               (("WORLD_SIZE", 1), ("RANK", 0), ("LOCAL_RANK", 0)))
    if rank == 0:
        ensure_output_dir(run_dir)
        if not resume and checkpoint.weights_path(run_dir).exists():
            raise UsageError(f"{run_dir} already holds a training run; pass --resume to continue it "
                             "or choose another --output")
    device = rank_device(config.device, local_rank)
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    dataset = TrainingDataset.from_files(
        Path(config.data), Path(config.images),
        ClipConfig(config.frames_per_clip, config.frame_window, config.multiscale or (config.size,),
                   0.5 if config.flip else 0.0),
        PreprocessConfig(),  # every preset and official checkpoint normalises the same way
        seed=config.seed,
    )
    init_report = None
    if state is not None:
        model = load_model(checkpoint.weights_path(run_dir), device="cpu").train()
    else:
        model = build_model(_model_config(config, dataset), seed=config.seed).train()
        if config.init is not None:
            init_report = initialise(model, config.init)
    apply_freeze(model, config.freeze)
    model = model.to(device)
    objective: torch.nn.Module = ClipObjective(model, config)
    optimizer = build_optimizer(model, config)
    if state is not None:
        optimizer.load_state_dict(state.optimizer)
    if world > 1:
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
        objective = DistributedDataParallel(objective, device_ids=[device.index] if device.type == "cuda" else None,
                                            find_unused_parameters=True)
    record = RunRecord(state.best_metric if state else None, state.best_step if state else None,
                       state.step if state else None)
    hooks: list[Hook] = []
    if rank == 0:
        _write_args(run_dir, config)
        saver = CheckpointHook(run_dir, config.save_every, record, config.data, command,
                               default_input_size(model.config))
        hooks.append(saver)
        if config.val_annotations is not None:
            hooks.append(_validation_hook(config, run_dir, record, saver))
        hooks.append(MetricsLogHook(run_dir / "metrics.jsonl", config.log_every, record,
                                    run_dir / "tensorboard" if tensorboard else None))
        if on_step is not None:
            hooks.append(CallbackHook(on_step))
    trainer = Trainer(config, objective, optimizer, dataset, device, hooks, state.step if state else 0, rank, world)
    if on_ready is not None:
        on_ready(trainer)
    try:
        trainer.train()
    finally:
        if world > 1:
            torch.distributed.destroy_process_group()
    best = checkpoint.weights_path(run_dir, checkpoint.BEST)
    return TrainingOutcome(run_dir, trainer.step, checkpoint.weights_path(run_dir), best if best.exists() else None,
                           record.best_metric, init_report, state.step if state else None)


def _model_config(config: TrainConfig, dataset: TrainingDataset) -> VppConfig:
    """The architecture (from --init's vppcli checkpoint if any, else the preset), with the
    dataset's classes, the stage's pruning and the training size as the default input size."""
    base = preset(config.preset)
    if config.init is not None and config.init.endswith(".safetensors"):
        try:
            base = read_metadata(config.init).config
            log.info("architecture from %s (%s)", config.init, base.name)
        except CheckpointError:  # not a vppcli checkpoint: a plain ViT state dict fits the preset
            pass
    return base.replace(
        class_names=dataset.class_names, category_ids=dataset.category_ids,
        head=dataclasses.replace(base.head, num_classes=dataset.num_classes),
        pruning=config.pruning_for_stage(base.pruning),
        preprocess=dataclasses.replace(base.preprocess, long_side=config.size),
    )


def _check_inputs(config: TrainConfig) -> None:
    for path, what in ((config.data, "--data annotations"), (config.images, "--images directory")):
        if not Path(path).exists():
            raise InputError(f"{what}: no such file or directory: {path}")
    if config.init is not None and not Path(config.init).is_file():
        raise InputError(f"--init: no such file: {config.init}")


def _validation_hook(config: TrainConfig, run_dir: Path, record: RunRecord, saver: CheckpointHook) -> ValidationHook:
    assert config.val_annotations is not None and config.val_images is not None
    dataset = load_dataset(Path(config.val_annotations), Path(config.val_images))
    if not dataset.has_ground_truth:
        raise InputError(f"--val: {config.val_annotations} has no ground truth to score against")
    videos = dataset.select(limit=config.val_videos)
    dataset.check_frames(videos)
    return ValidationHook(dataset, [v.id for v in videos], config.val_every, run_dir, record, saver)


def _write_args(run_dir: Path, config: TrainConfig) -> None:
    with AtomicFile(run_dir / "args.json", "w") as handle:
        handle.write(json.dumps(json.loads(config.to_json()), indent=2, sort_keys=True) + "\n")
