"""The training loop: a short `run_step` (clips -> losses -> backward -> clip -> step) and hooks
around it for checkpoints, validation and logging (detectron2's shape, training-anchors.md 2).

A step is a pure function of the weights, the optimizer state, the seed and the step number:
its clips are `dataset.sample(index)` for indices derived from the step, and its random draws
come from generators seeded with (seed, step). So resuming from a checkpoint repeats the
uninterrupted run exactly (on the CPU) without saving any RNG or sampler state.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from vppcli.errors import VppError
from vppcli.training.config import TrainConfig
from vppcli.training.data import TrainingDataset
from vppcli.training.objective import ClipObjective
from vppcli.training.optim import learning_rate, set_learning_rate

log = logging.getLogger(__name__)


class TrainingDiverged(VppError):
    """The loss became NaN or infinite."""

    exit_code = 1


@dataclass(frozen=True)
class StepResult:
    """What one optimizer step did (losses averaged over the step's clips, unweighted by rank)."""

    step: int  # 1-based count of completed steps
    loss: float
    losses: dict[str, float]
    keep_ratio: float
    lr: float
    grad_norm: float
    seconds: float
    clips: int
    track_queries: float = 0.0


class Hook:
    """Called by `Trainer.train`; override what you need."""

    def before_train(self, trainer: Trainer) -> None: ...

    def after_step(self, trainer: Trainer, result: StepResult) -> None: ...

    def after_train(self, trainer: Trainer, completed: bool) -> None: ...


def step_seed(seed: int, step: int, micro: int, rank: int) -> int:
    """A distinct 63-bit seed per (run seed, step, micro-step, rank)."""
    mixed = ((seed * 1_000_003 + step) * 1_009 + micro) * 257 + rank
    return (mixed * 0x9E3779B97F4A7C15) % (1 << 63)


@dataclass
class Trainer:
    config: TrainConfig
    objective: nn.Module  # a ClipObjective, or DDP around one
    optimizer: torch.optim.Optimizer
    dataset: TrainingDataset
    device: torch.device
    hooks: Sequence[Hook] = ()
    start_step: int = 0
    rank: int = 0
    world_size: int = 1
    step: int = field(init=False)  # completed steps
    stepping: bool = field(default=False, init=False)  # inside optimizer.step: weights half-updated

    def __post_init__(self) -> None:
        self.step = self.start_step

    @property
    def clip_objective(self) -> ClipObjective:
        inner = getattr(self.objective, "module", self.objective)
        assert isinstance(inner, ClipObjective)
        return inner

    def train(self) -> None:
        """Run from `start_step` to `config.steps`. The hooks' `after_train` runs whatever happens
        (a checkpoint hook saves on Ctrl-C); `completed` says whether the run reached the end."""
        completed = False
        for hook in self.hooks:
            hook.before_train(self)
        try:
            for step in range(self.start_step, self.config.steps):
                result = self.run_step(step)
                self.step = step + 1
                for hook in self.hooks:
                    hook.after_step(self, result)
            completed = True
        finally:
            for hook in self.hooks:
                hook.after_train(self, completed)

    def run_step(self, step: int) -> StepResult:
        started = time.perf_counter()
        self.objective.train()
        lr = learning_rate(self.config, step)
        set_learning_rate(self.optimizer, lr)
        self.optimizer.zero_grad(set_to_none=True)
        sums: dict[str, float] = {}
        keep, tracks = 0.0, 0.0
        accumulate = self.config.accumulate
        for micro in range(accumulate):
            index = (step * accumulate + micro) * self.world_size + self.rank
            clip = self.dataset.sample(index).to(self.device)
            sync = self._no_sync() if micro < accumulate - 1 else contextlib.nullcontext()
            seed = step_seed(self.config.seed, step, micro, self.rank)
            # Drop-path draws from torch's global RNG: seed it per micro-step (restoring the caller's
            # state afterwards), so a step does not depend on what ran before it in this process.
            with sync, self._autocast(), torch.random.fork_rng(devices=self._rng_devices()):
                torch.manual_seed(seed)
                losses, stats = self.objective(clip, seed)
                total = sum(losses.values()) / accumulate
            if not torch.isfinite(total):
                raise TrainingDiverged(f"the loss became {float(total)} at step {step + 1} "
                                       f"({_worst(losses)}); lower --lr or check the data")
            total.backward()
            for name, value in losses.items():
                sums[name] = sums.get(name, 0.0) + float(value.detach()) / accumulate
            keep += stats.keep_ratio / accumulate
            tracks += stats.track_queries / accumulate
        grad_norm = self._clip_gradients()
        self.stepping = True
        self.optimizer.step()
        self.stepping = False
        return StepResult(step + 1, sum(sums.values()), sums, keep, lr, grad_norm,
                          time.perf_counter() - started, accumulate * self.world_size, tracks)

    def _clip_gradients(self) -> float:
        params = [p for group in self.optimizer.param_groups for p in group["params"] if p.grad is not None]
        max_norm = self.config.clip_grad_norm if self.config.clip_grad_norm > 0 else math.inf
        return float(torch.nn.utils.clip_grad_norm_(params, max_norm))

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.config.amp == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _rng_devices(self) -> list[int]:
        return [self.device.index or 0] if self.device.type == "cuda" else []

    def _no_sync(self) -> contextlib.AbstractContextManager:
        # Gradient accumulation under DDP: all-reduce only on the last micro-step.
        no_sync = getattr(self.objective, "no_sync", None)
        return no_sync() if callable(no_sync) else contextlib.nullcontext()


def _worst(losses: dict[str, Tensor]) -> str:
    bad = [name for name, value in losses.items() if not torch.isfinite(value)]
    return f"non-finite: {', '.join(bad[:3])}" if bad else "the sum overflowed"

