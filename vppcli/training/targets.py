"""Ground truth of one frame and one training clip, as the data pipeline hands it to the losses."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class FrameTargets:
    """The objects visible in one frame, in the padded network-input frame.

    labels:       [G] int64 class index in 0..num_classes-1.
    masks:        [G, Hp, Wp] bool at the padded input resolution (padding is background).
    instance_ids: [G] int64 object identity, unique within a video and stable across its frames
                  (the YouTube-VIS annotation id); links a track query to its next-frame target.
    """

    labels: Tensor
    masks: Tensor
    instance_ids: Tensor

    def __post_init__(self) -> None:
        count = self.labels.shape[0]
        if self.masks.dim() != 3 or self.masks.shape[0] != count or self.instance_ids.shape[0] != count:
            raise ValueError(
                f"inconsistent targets: {count} labels, masks {tuple(self.masks.shape)}, "
                f"{self.instance_ids.shape[0]} ids"
            )

    @property
    def num_objects(self) -> int:
        return int(self.labels.shape[0])

    @staticmethod
    def empty(height: int, width: int, device: torch.device | str = "cpu") -> FrameTargets:
        return FrameTargets(
            torch.zeros(0, dtype=torch.int64, device=device),
            torch.zeros(0, height, width, dtype=torch.bool, device=device),
            torch.zeros(0, dtype=torch.int64, device=device),
        )

    def to(self, device: torch.device | str) -> FrameTargets:
        return FrameTargets(self.labels.to(device), self.masks.to(device), self.instance_ids.to(device))


@dataclass(frozen=True)
class ClipSample:
    """T frames of one video in temporal order, resized, flipped and padded identically.

    images:        [T, 3, Hp, Wp] float32, normalised as at inference, zero padding.
    targets:       one `FrameTargets` per frame.
    video_id:      the dataset's video id.
    frame_indices: index of each frame within the video (ascending).
    """

    images: Tensor
    targets: tuple[FrameTargets, ...]
    video_id: int
    frame_indices: tuple[int, ...]

    def __post_init__(self) -> None:
        frames = self.images.shape[0] if self.images.dim() == 4 else -1
        if frames != len(self.targets) or frames != len(self.frame_indices):
            raise ValueError("a clip needs one image, one target set and one frame index per frame")

    @property
    def num_frames(self) -> int:
        return int(self.images.shape[0])

    def to(self, device: torch.device | str) -> ClipSample:
        return ClipSample(self.images.to(device), tuple(t.to(device) for t in self.targets),
                          self.video_id, self.frame_indices)
