"""A small synthetic tracked video for the output-writer tests (no model involved).

Six processed frames (source frames 0, 2, ..., 10 of a 20 fps video) with three moving squares:
track 1 is everywhere but frame 4, track 2 skips frames 2 and 4, track 3 appears at frame 3
and overlaps track 2 (scoring above it at frame 3, below it at frame 5); frame 4 is empty.
"""

from __future__ import annotations

import numpy as np
import torch

from vppcli.model.postprocess import mask_boxes
from vppcli.outputs.base import FrameRecord, VideoMeta
from vppcli.results import FrameInstances

HEIGHT, WIDTH = 48, 64
CLASS_NAMES = ("cat", "dog", "bird")
CATEGORY_IDS = (3, 7, 11)
BACKGROUND = 60  # grey level of every frame
SOURCE_FPS, STRIDE = 20.0, 2

# Per processed frame: (track id, label, score, top, left, side).
PLAN: list[list[tuple[int, int, float, int, int, int]]] = [
    [(1, 0, 0.9, 4, 4, 12), (2, 1, 0.8, 20, 40, 14)],
    [(1, 0, 0.8, 4, 8, 12), (2, 1, 0.7, 20, 37, 14)],
    [(1, 1, 0.7, 4, 12, 12)],
    [(3, 2, 0.95, 24, 30, 14), (1, 0, 0.6, 4, 16, 12), (2, 0, 0.6, 20, 31, 14)],
    [],
    [(1, 0, 0.5, 4, 24, 12), (2, 1, 0.9, 20, 25, 14), (3, 2, 0.4, 26, 20, 14)],
]
NUM_FRAMES = len(PLAN)


def make_meta(height: int = HEIGHT, width: int = WIDTH, name: str = "clip") -> VideoMeta:
    return VideoMeta(
        name=name, source=f"{name}.mp4", height=height, width=width, fps=SOURCE_FPS / STRIDE,
        video_id=4, class_names=CLASS_NAMES, category_ids=CATEGORY_IDS,
    )


def square_mask(height: int, width: int, top: int, left: int, side: int) -> torch.Tensor:
    mask = torch.zeros(height, width, dtype=torch.bool)
    mask[top : top + side, left : left + side] = True
    return mask


def make_instances(position: int, height: int = HEIGHT, width: int = WIDTH, scale: int = 1) -> FrameInstances:
    """Frame `position` of the plan, squares (positions and sides) multiplied by `scale`."""
    rows = PLAN[position]
    if not rows:
        return FrameInstances.empty(position, height, width)
    masks = torch.stack([
        square_mask(height, width, scale * top, scale * left, scale * side) for _, _, _, top, left, side in rows
    ])
    return FrameInstances(
        frame_index=position,
        track_ids=torch.tensor([row[0] for row in rows], dtype=torch.int64),
        labels=torch.tensor([row[1] for row in rows], dtype=torch.int64),
        scores=torch.tensor([row[2] for row in rows], dtype=torch.float32),
        masks=masks,
        boxes=mask_boxes(masks),
    )


def make_records(height: int = HEIGHT, width: int = WIDTH, scale: int = 1) -> list[FrameRecord]:
    image = np.full((height, width, 3), BACKGROUND, dtype=np.uint8)
    return [
        FrameRecord(
            index=STRIDE * position,
            timestamp=STRIDE * position / SOURCE_FPS,
            image=image,
            instances=make_instances(position, height, width, scale),
        )
        for position in range(NUM_FRAMES)
    ]


def expected_id_map(position: int, height: int = HEIGHT, width: int = WIDTH, scale: int = 1) -> np.ndarray:
    """Track id per pixel, painted independently of the writers: higher score wins overlaps."""
    ids = np.zeros((height, width), dtype=np.int64)
    for track_id, _, _, top, left, side in sorted(PLAN[position], key=lambda row: row[2]):
        ids[scale * top : scale * (top + side), scale * left : scale * (left + side)] = track_id
    return ids
