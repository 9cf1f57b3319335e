"""Per-instance values the JSON writers share (ids, boxes, areas, RLE)."""

from __future__ import annotations

from dataclasses import dataclass

from vppcli.outputs.rle import Rle, encode_masks, rle_areas
from vppcli.results import FrameInstances

# Per-frame scores are float32: six decimals keep all their precision in [0, 1] and read well.
SCORE_DECIMALS = 6


@dataclass(frozen=True)
class InstanceRecord:
    track_id: int
    label: int
    score: float
    bbox_xywh: list[float]  # COCO box: x, y, width, height
    area: int  # mask pixel count
    rle: Rle


def instance_records(instances: FrameInstances) -> list[InstanceRecord]:
    """The records of one frame, in the frame's instance order.

    This encodes every full-size mask, which dominates the JSON writers' cost: the writers of a
    video share one computation per frame through `FrameRecord.instance_records`.
    """
    on_cpu = instances.cpu()
    rles = encode_masks(on_cpu.masks)
    rows = zip(
        on_cpu.track_ids.tolist(), on_cpu.labels.tolist(), on_cpu.scores.tolist(),
        on_cpu.boxes.tolist(), rle_areas(rles), rles,
    )
    return [
        InstanceRecord(
            track_id=track_id, label=label, score=round(score, SCORE_DECIMALS),
            bbox_xywh=[float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
            area=int(area), rle=rle,
        )
        for track_id, label, score, (x0, y0, x1, y1), area, rle in rows
    ]
