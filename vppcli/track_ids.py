"""Track ids as users see them: 1, 2, 3, ... in order of first appearance in a video's outputs.

The tracker (like the reference) consumes an id for every candidate before mask-NMS and the
score threshold, so the ids that survive are sparse (1, 22, 54 within three frames). Its
decisions are kept; only the numbering the outputs show is made dense: the first instance
written gets 1, the next new one 2, and an id keeps its number for the rest of the video.
Within a frame, new ids are numbered in the order the instances come (descending score).
"""

from __future__ import annotations

import dataclasses

import torch

from vppcli.results import FrameInstances


class DenseTrackIds:
    """Renumbers the tracker's ids of one video (one instance per video)."""

    def __init__(self) -> None:
        self.numbers: dict[int, int] = {}  # tracker id -> the id shown

    def apply(self, instances: FrameInstances) -> FrameInstances:
        ids = [self.numbers.setdefault(i, len(self.numbers) + 1) for i in instances.track_ids.tolist()]
        shown = torch.tensor(ids, dtype=instances.track_ids.dtype, device=instances.track_ids.device)
        return dataclasses.replace(instances, track_ids=shown)
