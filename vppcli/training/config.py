"""What one training run is: a frozen `TrainConfig`, stored in the run directory and in every
checkpoint, so a run can be resumed and a model traced back to the command that made it.

Defaults follow the reference recipe (reference-architecture.md 4; Mask2Former's YAML values in
training-anchors.md 6) unless a comment says why not.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Literal

from vppcli.config import PruningConfig
from vppcli.errors import UsageError

Stage = Literal["dense", "vpp"]

# Fields that may change when a run is resumed (how long and how often, not what is learnt).
RESUMABLE_CHANGES = frozenset({"steps", "save_every", "log_every", "val_every", "device", "threads"})


@dataclass(frozen=True)
class TrainConfig:
    data: str  # annotation file of the training split
    images: str  # its JPEGImages directory
    output: str  # run directory
    stage: Stage = "dense"
    preset: str = "compact"
    init: str | None = None  # checkpoint the weights start from
    steps: int = 20000  # optimizer steps
    size: int = 256  # long side of the training frames (also the model's default at inference)
    multiscale: tuple[int, ...] = ()  # long sides drawn per clip instead of `size`
    clip_frames: int = 0  # frames per clip; 0 = the reference's (2 dense, 3 vpp)
    frame_window: int = 5  # reference frames lie within +-window of the key frame
    flip: bool = True
    accumulate: int = 1  # clips per optimizer step
    lr: float = 1e-4
    backbone_lr_mult: float = 0.1
    weight_decay: float = 0.05
    warmup_steps: int = 10
    lr_drop: float = 2.0 / 3.0  # fraction of `steps` after which the LR is divided by 10 (4 of 6 epochs)
    clip_grad_norm: float = 0.01
    freeze: tuple[str, ...] = ()
    # VPP stage: per-block keep targets (the trained schedule stored with the model).
    target_pkr: float | None = None
    map_keep_ratio: float | None = None
    selective_keep_ratios: tuple[float, ...] | None = None
    sparsity_weight: float = 40.0
    map_sparsity_weight: float = 10.0
    # Losses (Mask2Former's YAML values).
    class_weight: float = 2.0
    mask_weight: float = 5.0
    dice_weight: float = 5.0
    no_object_weight: float = 0.1
    num_points: int = 12544
    track_query_loss_weight: float = 0.5  # the reference halves the second frame's losses
    amp: Literal["off", "bf16"] = "off"
    device: str = "cpu"
    threads: int | None = None
    seed: int = 0
    save_every: int = 500
    log_every: int = 10
    val_annotations: str | None = None
    val_images: str | None = None
    val_every: int = 0  # 0 = only at the end when a validation split is given
    val_videos: int | None = None  # score only the first N validation videos (faster checks)

    def __post_init__(self) -> None:
        positive = {"steps": self.steps, "size": self.size, "accumulate": self.accumulate,
                    "save_every": self.save_every, "log_every": self.log_every, "num_points": self.num_points}
        for name, value in positive.items():
            if value < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
        for side in (self.size, *self.multiscale):
            if side < 64 or side % 32:
                raise UsageError(f"training sizes must be multiples of 32 and at least 64, got {side}")
        if self.clip_frames < 0 or self.clip_frames == 1:
            raise UsageError(f"--clip-frames must be 0 (default) or at least 2, got {self.clip_frames}")
        if self.stage not in ("dense", "vpp"):
            raise UsageError(f"--stage must be dense or vpp, got {self.stage!r}")
        if self.stage == "dense" and (self.target_pkr or self.map_keep_ratio or self.selective_keep_ratios):
            raise UsageError("keep-ratio targets belong to --stage vpp")
        if self.target_pkr is not None and not 1 / 12 < self.target_pkr < 1:
            raise UsageError(f"--target-pkr must be in (1/12, 1), got {self.target_pkr}")
        if self.lr <= 0 or self.backbone_lr_mult < 0 or self.weight_decay < 0 or self.clip_grad_norm < 0:
            raise UsageError("--lr must be positive; --backbone-lr-mult, --weight-decay, --clip-grad must not be negative")
        if (self.val_annotations is None) != (self.val_images is None):
            raise UsageError("give both --val-annotations and --val-images (or --val DIR)")
        if self.val_every < 0:
            raise UsageError(f"--val-every must not be negative, got {self.val_every}")

    @property
    def frames_per_clip(self) -> int:
        if self.clip_frames:
            return self.clip_frames
        return 2 if self.stage == "dense" else 3

    def pruning_for_stage(self, base: PruningConfig) -> PruningConfig:
        """The pruning config the trained model carries: off for the dense stage; for the VPP
        stage the base schedule, scaled to `target_pkr` or replaced by explicit ratios."""
        if self.stage == "dense":
            return dataclasses.replace(base, enabled=False)
        pruning = dataclasses.replace(base, enabled=True)
        if self.target_pkr is not None:
            pruning = schedule_for_pkr(pruning, self.target_pkr)
        if self.map_keep_ratio is not None:
            pruning = dataclasses.replace(pruning, map_keep_ratio=self.map_keep_ratio)
        if self.selective_keep_ratios is not None:
            if len(self.selective_keep_ratios) != len(pruning.selective_blocks):
                raise UsageError(f"--sm-keep needs {len(pruning.selective_blocks)} ratios, "
                                 f"got {len(self.selective_keep_ratios)}")
            pruning = dataclasses.replace(pruning, selective_keep_ratios=self.selective_keep_ratios)
        fractions = (pruning.map_keep_ratio, *pruning.selective_keep_ratios)
        if any(not 0 < f <= 1 for f in fractions) or list(pruning.selective_keep_ratios) != sorted(
                pruning.selective_keep_ratios, reverse=True) or pruning.selective_keep_ratios[0] > pruning.map_keep_ratio:
            raise UsageError(f"keep ratios must lie in (0, 1] and shrink from block to block, got {fractions}")
        return pruning

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TrainConfig:
        data: dict[str, Any] = json.loads(text)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UsageError(f"unknown training settings {unknown} (written by a newer vppcli?)")
        for name in ("multiscale", "freeze", "selective_keep_ratios"):
            if isinstance(data.get(name), list):
                data[name] = tuple(data[name])
        return cls(**data)

    def differences(self, other: TrainConfig) -> list[str]:
        """Fields (other than the resumable ones) whose values differ."""
        mine, theirs = dataclasses.asdict(self), dataclasses.asdict(other)
        return sorted(k for k in mine if k not in RESUMABLE_CHANGES and mine[k] != theirs[k])


def schedule_for_pkr(pruning: PruningConfig, target: float, depth: int = 12) -> PruningConfig:
    """Scale the trained keep fractions by one factor so that their mean over the ViT blocks is
    `target` (blocks before the Map-SM stay dense), keeping the schedule's shape."""
    shape = PruningConfig(map_block=pruning.map_block, map_keep_ratio=pruning.map_keep_ratio,
                          selective_blocks=pruning.selective_blocks,
                          selective_keep_ratios=pruning.selective_keep_ratios).trained_fractions(depth)
    dense = sum(1 for f in shape if f >= 1.0)
    scalable = sum(f for f in shape if f < 1.0)
    factor = (target * depth - dense) / scalable
    if factor <= 0 or pruning.map_keep_ratio * factor > 1.0:
        raise UsageError(f"--target-pkr {target} cannot be reached with this schedule")
    return dataclasses.replace(
        pruning,
        map_keep_ratio=round(pruning.map_keep_ratio * factor, 4),
        selective_keep_ratios=tuple(round(r * factor, 4) for r in pruning.selective_keep_ratios),
    )
