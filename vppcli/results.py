"""What the model hands to its users: per-frame tracked instances and per-video track summaries."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class PruningStage:
    """ViT blocks that share one keep mask: from a pruning module's block to the next one's.

    name: "map" (the Mapping-Selective Module) or "sm1", "sm2", ... (the selective modules in order).
    blocks: (first, last) block, inclusive.
    """

    name: str
    blocks: tuple[int, int]


@dataclass(frozen=True)
class PruningMasks:
    """Which patches every ViT block of one frame processed; recorded only on request
    (`VideoPredictor(record_masks=True)`, `Segmenter(record_pruning=True)`).

    grid: (H, W) patch grid of the padded network input (stride 16), N = H * W.
    input_size: (Hi, Wi) the resized frame inside the padded input (the padding is bottom/right),
        so grid row r covers frame rows [16 r, 16 r + 16) * H0 / Hi.
    blocks: per ViT block, [H, W] bool on the CPU (row-major like the tokens), None = every patch.
    stages: where the masks change (block 0 is always dense and belongs to none).
    first_frame: no temporal prior (first frame of a video, or one the Map-SM cannot use), so the
        Map-SM did not run and its stage is dense.
    """

    grid: tuple[int, int]
    input_size: tuple[int, int]
    blocks: tuple[Tensor | None, ...]
    stages: tuple[PruningStage, ...]
    first_frame: bool

    def block_mask(self, block: int) -> Tensor:
        """[H, W] bool keep mask of `block` (all True where every patch was processed)."""
        mask = self.blocks[block]
        return torch.ones(self.grid, dtype=torch.bool) if mask is None else mask

    def stage_mask(self, stage: PruningStage) -> Tensor:
        """[H, W] bool keep mask of the blocks of `stage` (they share it)."""
        return self.block_mask(stage.blocks[0])


@dataclass
class FrameStats:
    """Efficiency figures of one frame (counts, not timings, unless named `*_ms`)."""

    tokens_per_block: list[int]  # tokens the ViT block actually processed
    num_tokens: int  # N, patch tokens of the frame
    map_candidates: int | None = None  # previous-frame tokens the Map-SM compared against
    padded_size: tuple[int, int] = (0, 0)  # (Hp, Wp) network input, for `flops.frame_flops`
    num_track_queries: int = 0  # track queries fed to the decoder this frame
    pruning: PruningMasks | None = None  # per-block keep masks, only when recorded
    # Temporal reuse (None/False/0 with it off): pixel-decoder encoder queries recomputed per layer
    # and stride-4 pixels the FPN convolution computed (None = all), whether the frame was a dense
    # refresh, and its mean relative encoder-input change (0 without a previous frame).
    encoder_queries: int | None = None
    fpn_pixels: int | None = None
    reuse_refreshed: bool = False
    reuse_change: float = 0.0

    @property
    def keep_ratio(self) -> float:
        """Patch keep ratio of this frame: mean fraction of tokens processed over the blocks."""
        return sum(self.tokens_per_block) / (len(self.tokens_per_block) * self.num_tokens)


@dataclass
class FrameInstances:
    """Tracked instances of one frame, at the frame's original resolution.

    track_ids: [M] int64, stable across frames of one video, from 1.
    labels:    [M] int64, 0-based class index (dataset id: `config.category_ids[label]`).
    scores:    [M] float32 detection scores (class prob x mask score).
    masks:     [M, H, W] bool.
    boxes:     [M, 4] float32 (x0, y0, x1, y1), exclusive upper corner; zeros for empty masks.
    """

    frame_index: int
    track_ids: Tensor
    labels: Tensor
    scores: Tensor
    masks: Tensor
    boxes: Tensor
    stats: FrameStats | None = None

    def __len__(self) -> int:
        return int(self.track_ids.numel())

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.masks.shape[-2]), int(self.masks.shape[-1])

    def cpu(self) -> FrameInstances:
        return FrameInstances(
            self.frame_index, self.track_ids.cpu(), self.labels.cpu(), self.scores.cpu(),
            self.masks.cpu(), self.boxes.cpu(), self.stats,
        )

    @staticmethod
    def empty(frame_index: int, height: int, width: int, device: torch.device | str = "cpu") -> FrameInstances:
        return FrameInstances(
            frame_index,
            torch.zeros(0, dtype=torch.int64, device=device),
            torch.zeros(0, dtype=torch.int64, device=device),
            torch.zeros(0, dtype=torch.float32, device=device),
            torch.zeros(0, height, width, dtype=torch.bool, device=device),
            torch.zeros(0, 4, dtype=torch.float32, device=device),
        )


@dataclass(frozen=True)
class TrackSummary:
    """One video-level track: the reference's YouTube-VIS formatting rules (mean score over the
    frames where the id appears, majority-vote class with ties to the smaller label)."""

    track_id: int
    label: int
    score: float
    num_frames: int
    first_frame: int
    last_frame: int
