"""Hooks of the training loop, in the order the trainer runs them: checkpoint, validation,
metrics log, progress. A checkpoint exists before validation can fail; the log and the
progress line see the validation result of the same step."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from vppcli.evaluation.dataset import YtvisDataset, match_classes
from vppcli.evaluation.metric import VideoAP, evaluate_results
from vppcli.evaluation.runner import ModelSpec, RunSettings, make_job, run_in_process
from vppcli.training import checkpoint
from vppcli.training.checkpoint import TrainingState
from vppcli.training.loop import Hook, StepResult, Trainer

log = logging.getLogger(__name__)


@dataclass
class RunRecord:
    """Mutable facts of the run that checkpoints carry and other hooks read."""

    best_metric: float | None = None
    best_step: int | None = None
    last_saved: int | None = None
    validation: dict[str, Any] = field(default_factory=dict)  # metrics of the latest validation


class CheckpointHook(Hook):
    """`last` every `every` steps and at the end; on Ctrl-C or an error, the last completed step
    (unless the optimizer was interrupted half-way, when the previous checkpoint stands)."""

    def __init__(self, run_dir: Path, every: int, record: RunRecord, dataset: str, command: str,
                 input_size: tuple[int, int]) -> None:
        self.run_dir, self.every, self.record = run_dir, every, record
        self.dataset, self.command, self.input_size = dataset, command, input_size

    def save(self, trainer: Trainer, name: str = checkpoint.LAST) -> Path:
        state = TrainingState(trainer.step, trainer.optimizer.state_dict(), trainer.config,
                              self.record.best_metric, self.record.best_step)
        path = checkpoint.save(self.run_dir, trainer.clip_objective.model, state, self.dataset, self.command,
                               self.input_size, name)
        if name == checkpoint.LAST:
            self.record.last_saved = trainer.step
        return path

    def after_step(self, trainer: Trainer, result: StepResult) -> None:
        if result.step % self.every == 0 or result.step == trainer.config.steps:
            self.save(trainer)

    def after_train(self, trainer: Trainer, completed: bool) -> None:
        if completed or trainer.stepping or trainer.step == self.record.last_saved or trainer.step == 0:
            return
        self.save(trainer)
        log.info("saved step %d to %s", trainer.step, checkpoint.weights_path(self.run_dir))


class ValidationHook(Hook):
    """Video AP on a held-out split every `every` steps (and at the end) with the inference path;
    the best AP so far is kept as `best.safetensors`."""

    def __init__(self, dataset: YtvisDataset, video_ids: list[int], every: int, run_dir: Path,
                 record: RunRecord, saver: CheckpointHook) -> None:
        self.dataset, self.video_ids, self.every = dataset, video_ids, every
        self.run_dir, self.record, self.saver = run_dir, record, saver

    def after_step(self, trainer: Trainer, result: StepResult) -> None:
        due = self.every and result.step % self.every == 0
        if not due and result.step != trainer.config.steps:
            return
        scores = self.validate(trainer)
        ap = scores.metrics.get("AP")
        self.record.validation = {"step": result.step, **{k: v for k, v in scores.metrics.items() if v is not None}}
        log.info("validation at step %d: AP %s", result.step, "n/a" if ap is None else f"{100 * ap:.1f}")
        if ap is not None and (self.record.best_metric is None or ap > self.record.best_metric):
            self.record.best_metric, self.record.best_step = ap, result.step
            self.saver.save(trainer, checkpoint.BEST)

    def validate(self, trainer: Trainer) -> VideoAP:
        model = trainer.clip_objective.model
        mapping = match_classes(model.config, self.dataset.categories, allow_mismatch=False)
        settings = RunSettings(ModelSpec(weights=str(checkpoint.weights_path(self.run_dir))),
                               device=str(trainer.device))
        job = make_job(self.dataset, self.video_ids, settings, self.run_dir / "val", overwrite=True)
        try:
            outcome = run_in_process(job, loaded=(model, mapping))
        finally:
            model.train()
        return evaluate_results(self.dataset.data, outcome.results, self.video_ids)


class MetricsLogHook(Hook):
    """One JSON line per `every` steps in `metrics.jsonl` (appended, so a resumed run continues
    the same file), and TensorBoard scalars when tensorboard is installed and asked for."""

    def __init__(self, path: Path, every: int, record: RunRecord, tensorboard_dir: Path | None = None) -> None:
        self.path, self.every, self.record = path, every, record
        self.tensorboard_dir = tensorboard_dir
        self._handle: IO[str] | None = None
        self._writer: Any = None
        self._logged_validation: int | None = None

    def before_train(self, trainer: Trainer) -> None:
        self._handle = open(self.path, "a", encoding="utf-8")
        if self.tensorboard_dir is not None:
            from torch.utils.tensorboard import SummaryWriter  # optional dependency

            self._writer = SummaryWriter(str(self.tensorboard_dir))

    def after_step(self, trainer: Trainer, result: StepResult) -> None:
        validation = self.record.validation
        fresh = validation and validation.get("step") == result.step != self._logged_validation
        if result.step % self.every and not fresh and result.step != trainer.config.steps:
            return
        entry = {"step": result.step, "loss": result.loss, **result.losses, "keep_ratio": result.keep_ratio,
                 "lr": result.lr, "grad_norm": result.grad_norm, "seconds": result.seconds,
                 "clips": result.clips, "track_queries": result.track_queries}
        if fresh:
            entry["val"] = {k: v for k, v in validation.items() if k != "step"}
            self._logged_validation = result.step
        assert self._handle is not None
        self._handle.write(json.dumps(entry, sort_keys=True) + "\n")
        self._handle.flush()
        if self._writer is not None:
            for name, value in entry.items():
                if isinstance(value, (int, float)) and name != "step":
                    self._writer.add_scalar(f"train/{name}", value, result.step)
            for name, value in entry.get("val", {}).items():
                self._writer.add_scalar(f"val/{name}", value, result.step)

    def after_train(self, trainer: Trainer, completed: bool) -> None:
        if self._handle is not None:
            self._handle.close()
        if self._writer is not None:
            self._writer.close()


class CallbackHook(Hook):
    """Adapts plain callables (the CLI's progress display) to the hook protocol."""

    def __init__(self, on_step: Callable[[Trainer, StepResult], None]) -> None:
        self.on_step = on_step

    def after_step(self, trainer: Trainer, result: StepResult) -> None:
        self.on_step(trainer, result)
