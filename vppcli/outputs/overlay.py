"""The overlay video: each track's mask filled in its colour, outlined, and labelled."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np

from vppcli.outputs.atomic import AtomicFile, check_free_for_file
from vppcli.outputs.base import FrameRecord, VideoMeta
from vppcli.outputs.colors import text_color, track_color
from vppcli.outputs.encoders import Codec, make_encoder
from vppcli.results import FrameInstances

logger = logging.getLogger(__name__)

MASK_ALPHA = 0.5
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def _drawing_scale(height: int, width: int) -> tuple[float, int, int]:
    """Font scale, text thickness and outline thickness that read well at this frame size."""
    short_side = min(height, width)
    font_scale = max(0.3, short_side / 1000)
    return font_scale, max(1, round(font_scale * 1.5)), max(1, round(short_side / 400))


def _label_geometry(
    text: str, box: list[float], height: int, width: int
) -> tuple[tuple[int, int, int, int], tuple[int, int]]:
    """The label's background rectangle (left, top, right, bottom; inclusive) and text origin."""
    font_scale, thickness, _ = _drawing_scale(height, width)
    (text_width, text_height), baseline = cv2.getTextSize(text, _FONT, font_scale, thickness)
    pad = max(1, thickness)
    label_width, label_height = text_width + 2 * pad, text_height + baseline + 2 * pad
    left, top = int(box[0]), int(box[1])
    if top - label_height >= 0:
        top -= label_height
    left = max(0, min(left, width - label_width))
    top = max(0, min(top, height - label_height))
    return (left, top, left + label_width - 1, top + label_height - 1), (left + pad, top + pad + text_height)


def label_layout(text: str, box: list[float], height: int, width: int) -> tuple[int, int, int, int]:
    """Where the label of `box` goes: (left, top, right, bottom), inclusive.

    At the top of the box: above it when there is room, inside it otherwise, and always moved
    inside the frame (a label wider than the frame starts at its left edge).
    """
    return _label_geometry(text, box, height, width)[0]


def label_text(track_id: int, class_name: str, score: float) -> str:
    return f"#{track_id} {class_name} {score:.2f}"


def _draw_label(canvas: np.ndarray, text: str, box: list[float], color: tuple[int, int, int]) -> None:
    height, width = canvas.shape[:2]
    font_scale, thickness, _ = _drawing_scale(height, width)
    (left, top, right, bottom), origin = _label_geometry(text, box, height, width)
    cv2.rectangle(canvas, (left, top), (right, bottom), color, cv2.FILLED)
    cv2.putText(canvas, text, origin, _FONT, font_scale, text_color(color), thickness, cv2.LINE_AA)


def render_overlay(image: np.ndarray, instances: FrameInstances, class_names: tuple[str, ...]) -> np.ndarray:
    """Draw the instances on a copy of `image`.

    Args:
        image: [H, W, 3] uint8 RGB.
        instances: the frame's instances, masks [M, H, W].
        class_names: label -> name.

    Returns:
        [H, W, 3] uint8 RGB. Higher-scored instances are drawn on top; an overlap is tinted once,
        by the instance on top, so overlaps do not darken.
    """
    instances = instances.cpu()
    canvas = np.ascontiguousarray(image, dtype=np.uint8).copy()
    if len(instances) == 0:
        return canvas
    order = np.argsort(instances.scores.numpy(), kind="stable").tolist()
    masks = np.ascontiguousarray(instances.masks.numpy())
    track_ids = instances.track_ids.tolist()
    colors = [track_color(track_id) for track_id in track_ids]

    # Rank k = k-th instance in drawing order; a pixel belongs to the last instance covering it.
    on_top = np.zeros(canvas.shape[:2], dtype=np.int32)
    extents: dict[int, tuple[int, int, int, int]] = {}  # rank -> x, y, w, h of a non-empty mask
    for rank, index in enumerate(order, start=1):
        np.copyto(on_top, rank, where=masks[index])
        x, y, w, h = cv2.boundingRect(masks[index].view(np.uint8))
        if w and h:
            extents[rank] = (x, y, w, h)
    # Blend inside each mask's bounding rectangle only: masks are usually small next to the frame.
    for rank, (x, y, w, h) in extents.items():
        region = canvas[y : y + h, x : x + w]
        color = np.full_like(region, colors[order[rank - 1]])
        tinted = cv2.addWeighted(region, 1 - MASK_ALPHA, color, MASK_ALPHA, 0)
        np.copyto(region, tinted, where=(on_top[y : y + h, x : x + w] == rank)[..., None])

    _, _, outline = _drawing_scale(*canvas.shape[:2])
    visible = [order[rank - 1] for rank in extents]
    for index in visible:
        contours, _ = cv2.findContours(masks[index].view(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(canvas, contours, -1, colors[index], outline, cv2.LINE_AA)
    boxes = instances.boxes.tolist()
    labels = instances.labels.tolist()
    scores = instances.scores.tolist()
    for index in visible:
        text = label_text(track_ids[index], class_names[labels[index]], scores[index])
        _draw_label(canvas, text, boxes[index], colors[index])
    return canvas


class OverlayWriter:
    """Writes `overlay.mp4` at the original size and the sequence's fps (`overlay.png`, the one
    frame as an image, for an image input: `path` says which).

    `encoder` says what encodes it, e.g. "libx264 yuv420p (ffmpeg at /usr/bin/ffmpeg)" or
    "mp4v (OpenCV)" (see `encoders.make_encoder` for the choice).
    """

    def __init__(self, meta: VideoMeta, path: Path, codec: Codec = "auto") -> None:
        self._meta = meta
        # OpenCV picks the container from the extension, so the temporary keeps it.
        self._file = AtomicFile(path, suffix=path.suffix)
        self._encoder = make_encoder(codec, self._file.temporary, path, meta.width, meta.height, meta.fps)
        self.encoder = self._encoder.description
        self._frames = 0
        logger.info("overlay %s: %s", path, self.encoder)

    def write_frame(self, record: FrameRecord) -> None:
        expected = (self._meta.height, self._meta.width, 3)
        if record.image.shape != expected:
            raise ValueError(f"overlay frame {record.index} is {record.image.shape}, expected {expected}")
        self._encoder.write(render_overlay(record.image, record.instances, self._meta.class_names))
        self._frames += 1

    def finish(self) -> None:
        if self._frames == 0:
            logger.warning("no frames: %s not written", self._file.final)
            return
        check_free_for_file(self._file.final)  # before waiting for the encoder, not only after
        self._encoder.finish()
        self._file.finish()

    def commit(self) -> list[Path]:
        return [self._file.commit()] if self._frames else []

    def abort(self) -> None:
        self._encoder.kill()
        self._file.discard()
