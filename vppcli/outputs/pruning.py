"""The pruning view: for every frame, which patches each VPP pruning stage keeps.

One panel per stage (the Map-SM, then each selective module), laid out in a near-square grid
(2x2 for the usual four stages): the frame scaled to a panel whose long side is
`PANEL_LONG_SIDE` pixels, the patches that the stage's blocks skip darkened, the tracked
instances outlined in their overlay colours, and a caption above with the stage, its blocks and
the fraction of patches kept. A frame without a temporal prior (the first of a video) has a
dense Map-SM stage, and its caption says so.

Masks only shrink within a frame, so a patch dropped at one stage is dark in every later one.
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from vppcli.outputs.atomic import AtomicFile, check_free_for_file
from vppcli.outputs.base import FrameRecord, VideoMeta
from vppcli.outputs.colors import track_color
from vppcli.outputs.encoders import Codec, Encoder, make_encoder
from vppcli.results import FrameInstances, PruningMasks, PruningStage

logger = logging.getLogger(__name__)

# Big enough to read a patch grid and a caption on any input size; small enough that four
# panels of a 1080p video (960x540 in all) encode quickly.
PANEL_LONG_SIDE = 480
CAPTION_HEIGHT = 22  # pixels above each panel
GAP = 4  # black pixels between panels
PRUNED_SHIFT = 2  # a pruned patch is shown at 1/4 of its brightness (`value >> 2`)
_FONT = cv2.FONT_HERSHEY_SIMPLEX
_FONT_SCALE = 0.45
_CAPTION_BACKGROUND = (24, 24, 24)
_CAPTION_TEXT = (255, 255, 255)
_FIRST_FRAME_TEXT = (255, 190, 0)  # amber: this stage had no temporal prior
_STAGE_LABELS = {"map": "Map-SM"}


@dataclass(frozen=True)
class PanelLayout:
    """Where the panels go on the view.

    panel_size: (h, w) of the frame inside one panel, both even (H.264 4:2:0 needs even sizes,
        and every other size on the canvas is even too).
    rows / cols: panels per column / row; stage i goes to row i // cols, column i % cols.
    """

    panel_size: tuple[int, int]
    rows: int
    cols: int

    @property
    def canvas_size(self) -> tuple[int, int]:
        """(height, width) of the whole view."""
        height, width = self.panel_size
        return (self.rows * (CAPTION_HEIGHT + height) + (self.rows - 1) * GAP,
                self.cols * width + (self.cols - 1) * GAP)

    def panel_origin(self, stage_index: int) -> tuple[int, int]:
        """(top, left) of stage `stage_index`'s frame image (its caption is just above)."""
        height, width = self.panel_size
        row, col = divmod(stage_index, self.cols)
        return row * (CAPTION_HEIGHT + height + GAP) + CAPTION_HEIGHT, col * (width + GAP)


def _even(value: float) -> int:
    return max(2, 2 * round(value / 2))


def panel_layout(height: int, width: int, num_stages: int) -> PanelLayout:
    """The layout for frames of `height` x `width` pixels and `num_stages` stages."""
    scale = PANEL_LONG_SIDE / max(height, width)
    cols = math.ceil(math.sqrt(num_stages))
    return PanelLayout((_even(height * scale), _even(width * scale)), math.ceil(num_stages / cols), cols)


@functools.lru_cache(maxsize=8)
def patch_lookup(panel_size: tuple[int, int], grid: tuple[int, int],
                 input_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The patch under every panel pixel: ([h] grid rows, [w] grid columns), int64.

    A panel pixel's centre maps to the resized network input (`input_size`, which the padding
    extends at the bottom/right), and from there to the patch grid at stride 16.
    """
    indices = []
    for pixels, input_pixels, cells in zip(panel_size, input_size, grid):
        centres = (np.arange(pixels) + 0.5) * (input_pixels / pixels)
        indices.append(np.minimum(centres // 16, cells - 1).astype(np.int64))
    return indices[0], indices[1]


def stage_caption(stage: PruningStage, keep: float, first_frame: bool) -> str:
    label = _STAGE_LABELS.get(stage.name, stage.name.upper())
    first, last = stage.blocks
    text = f"{label}  blocks {first}-{last}  keep {keep:.0%}"
    if first_frame and stage.name == "map":
        text += "  first frame: no prior"
    return text


def _draw_caption(canvas: np.ndarray, text: str, top: int, left: int, width: int, color: tuple[int, int, int]) -> None:
    cv2.rectangle(canvas, (left, top), (left + width - 1, top + CAPTION_HEIGHT - 1), _CAPTION_BACKGROUND, cv2.FILLED)
    (text_width, text_height), _ = cv2.getTextSize(text, _FONT, _FONT_SCALE, 1)
    scale = _FONT_SCALE * min(1.0, (width - 8) / text_width)  # shrink to fit narrow panels
    baseline = top + (CAPTION_HEIGHT + round(text_height * scale / _FONT_SCALE)) // 2
    cv2.putText(canvas, text, (left + 4, baseline), _FONT, scale, color, 1, cv2.LINE_AA)


Outline = tuple[list[np.ndarray], tuple[int, int, int]]  # contours at panel resolution, RGB colour


def _outlines(instances: FrameInstances, panel_size: tuple[int, int]) -> list[Outline]:
    """Each instance's outline at panel resolution, with its track colour."""
    height, width = panel_size
    masks = instances.masks.numpy()
    outlines = []
    for mask, track_id in zip(masks, instances.track_ids.tolist()):
        small = cv2.resize(mask.view(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST)
        contours, _ = cv2.findContours(small, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        outlines.append((list(contours), track_color(track_id)))
    return outlines


def render_pruning_view(image: np.ndarray, instances: FrameInstances, pruning: PruningMasks) -> np.ndarray:
    """Draw the pruning view of one frame.

    Args:
        image: [H, W, 3] uint8 RGB, the original frame.
        instances: its tracked instances (masks [M, H, W]), outlined on every panel.
        pruning: the frame's keep masks.

    Returns:
        [*panel_layout(H, W, stages).canvas_size, 3] uint8 RGB.
    """
    layout = panel_layout(image.shape[0], image.shape[1], len(pruning.stages))
    height, width = layout.panel_size
    canvas = np.zeros((*layout.canvas_size, 3), dtype=np.uint8)
    frame = cv2.resize(np.ascontiguousarray(image), (width, height), interpolation=cv2.INTER_AREA)
    dark = frame >> PRUNED_SHIFT
    rows, cols = patch_lookup(layout.panel_size, pruning.grid, pruning.input_size)
    outlines = _outlines(instances.cpu(), layout.panel_size)
    num_tokens = pruning.grid[0] * pruning.grid[1]
    for index, stage in enumerate(pruning.stages):
        mask = pruning.stage_mask(stage).numpy()
        keep = mask[rows[:, None], cols[None, :]]
        top, left = layout.panel_origin(index)
        panel = canvas[top : top + height, left : left + width]
        np.copyto(panel, np.where(keep[..., None], frame, dark))
        for contours, color in outlines:
            cv2.drawContours(panel, contours, -1, color, 1, cv2.LINE_AA)
        first_frame = pruning.first_frame and stage.name == "map"
        text = stage_caption(stage, int(mask.sum()) / num_tokens, pruning.first_frame)
        _draw_caption(canvas, text, top - CAPTION_HEIGHT, left, width,
                      _FIRST_FRAME_TEXT if first_frame else _CAPTION_TEXT)
    return canvas


def frame_pruning(record: FrameRecord) -> PruningMasks:
    """The record's keep masks; the pruning formats cannot do without them."""
    stats = record.instances.stats
    if stats is None or stats.pruning is None:
        raise ValueError(f"frame {record.index} has no pruning masks: segment with record_pruning=True")
    return stats.pruning


class PruningVideoWriter:
    """Writes `pruning.mp4`: the pruning view of every frame, at the sequence's fps, with the
    overlay's encoder rules (`encoders.make_encoder`) and atomic write; `pruning.png` for an
    image input, as the overlay.

    The encoder starts at the first frame, when the number of stages, and so the view's size,
    is known.
    """

    def __init__(self, meta: VideoMeta, path: Path, codec: Codec = "auto") -> None:
        self._meta = meta
        self._codec: Codec = codec
        # OpenCV picks the container from the extension, so the temporary keeps it.
        self._file = AtomicFile(path, suffix=path.suffix)
        self._encoder: Encoder | None = None

    def write_frame(self, record: FrameRecord) -> None:
        expected = (self._meta.height, self._meta.width, 3)
        if record.image.shape != expected:
            raise ValueError(f"pruning view frame {record.index} is {record.image.shape}, expected {expected}")
        view = render_pruning_view(record.image, record.instances, frame_pruning(record))
        if self._encoder is None:
            height, width = view.shape[:2]
            self._encoder = make_encoder(self._codec, self._file.temporary, self._file.final, width, height,
                                         self._meta.fps)
            logger.info("pruning view %s: %dx%d, %s", self._file.final, width, height, self._encoder.description)
        self._encoder.write(view)

    def finish(self) -> None:
        if self._encoder is None:
            logger.warning("no frames: %s not written", self._file.final)
            return
        check_free_for_file(self._file.final)  # before waiting for the encoder, not only after
        self._encoder.finish()
        self._file.finish()

    def commit(self) -> list[Path]:
        return [self._file.commit()] if self._encoder is not None else []

    def abort(self) -> None:
        if self._encoder is not None:
            self._encoder.kill()
        self._file.discard()
