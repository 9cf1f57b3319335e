"""Sparse temporal reuse in the pixel decoder: its deformable encoder and its stride-4 FPN
convolution (opt-in, inference only).

VPP prunes only the ViT blocks; the pixel decoder stays dense and dominates the cost.
In this mode a frame recomputes only some of the encoder's multi-scale query tokens and reuses
the previous frame's encoder states for the others (the idea of Eventful Transformers, Dutson
et al., ICCV 2023, applied to a deformable encoder):

* a token is a candidate when the ViT kept its patch in the last block this frame (the VPP keep
  mask mapped to strides 32/16/8) or when its encoder input changed by at least
  `change_threshold` since it was last computed;
* at most `budget * N` candidates are recomputed: ViT-kept tokens first, then by largest change;
* every encoder layer gathers the selected queries, runs attention + FFN on them alone and
  scatters them into the previous frame's state of that layer; the attention's values are the
  current, partly reused maps;
* a full dense frame (a refresh) runs on a video's first frame, every `refresh_every` frames and
  after a shot cut (the mean change of the frame above `cut_threshold`), so errors cannot
  accumulate.

The stride-4 FPN convolution (3x3, the largest single layer of the pixel decoder) does the same
on `FPN_TILE`-pixel tiles of its input map (`vppcli.model.tile_conv`): tiles the ViT kept or
whose input changed are convolved, the others keep the previous frame's convolution output, and
the GroupNorm and the rest run on the whole map.

The model holds no state: the previous frame's `PixelDecoderCache` comes in and the new one goes
out; the caller (`vppcli.inference.VideoState`) keeps it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

logger = logging.getLogger(__name__)

# Side of the FPN's reuse tiles in stride-4 pixels (2x2 ViT patches); it divides every padded
# stride-4 map, whose sides are multiples of 32 / 4.
FPN_TILE = 8


@dataclass(frozen=True)
class TemporalReuse:
    """Settings of the sparse temporal reuse mode (None where a setting is taken = the mode is off).

    budget: largest fraction of the encoder's query tokens (and of the FPN's tiles) recomputed per
        frame, in (0, 1].
    change_threshold: relative input change (`relative_change`) from which a token or tile counts
        as changed; 0 = every one is a candidate (then budget 1 recomputes everything).
    cut_threshold: mean relative change of a frame above which it is a shot cut (refreshed).
    refresh_every: a dense frame every this many frames (1 = always dense).
    """

    budget: float = 0.3
    change_threshold: float = 0.05
    cut_threshold: float = 0.5
    refresh_every: int = 16

    def __post_init__(self) -> None:
        if not 0.0 < self.budget <= 1.0:
            raise ValueError(f"reuse budget must be in (0, 1], got {self.budget}")
        if self.change_threshold < 0 or self.cut_threshold < 0:
            raise ValueError("reuse thresholds must be non-negative")
        if self.refresh_every < 1:
            raise ValueError(f"refresh_every must be at least 1, got {self.refresh_every}")


@dataclass
class PixelDecoderCache:
    """The previous frame's pixel-decoder states (batch 1), all bounded by one frame.

    reference: [1, N, C] encoder input of each token as of its last recomputation.
    layer_outputs: per encoder layer, [1, N, C] its output (the next layer's input).
    spatial_shapes: [(H_l, W_l)] the cache belongs to (coarsest first).
    fpn_reference: [1, C, H/4, W/4] FPN convolution input of each tile as of its last recomputation.
    fpn_conv: [1, C, H/4, W/4] the FPN convolution's output (before its GroupNorm).
    age: frames since the last refresh.
    """

    reference: Tensor
    layer_outputs: list[Tensor]
    spatial_shapes: list[tuple[int, int]]
    fpn_reference: Tensor
    fpn_conv: Tensor
    age: int

    def num_bytes(self) -> int:
        tensors = (self.reference, *self.layer_outputs, self.fpn_reference, self.fpn_conv)
        return sum(t.numel() * t.element_size() for t in tensors)


@dataclass(frozen=True)
class ReuseOutcome:
    """What the mode did on one frame: `computed` of `total` encoder queries per layer and
    `fpn_pixels` of `fpn_total` stride-4 pixels of the FPN convolution were recomputed;
    `refreshed` = a dense frame; `change` = the frame's mean relative encoder-input change."""

    computed: int
    total: int
    fpn_pixels: int
    fpn_total: int
    refreshed: bool
    change: float


def kept_on_grids(keep_mask: Tensor | None, grid: tuple[int, int],
                        spatial_shapes: list[tuple[int, int]]) -> Tensor | None:
    """The ViT's stride-16 keep mask on other grids (the encoder's levels, the FPN's tiles).

    Args:
        keep_mask: [1, N16] bool tokens the last ViT block processed (None = all).
        grid: (H, W) stride-16 grid; spatial_shapes: the target grids, e.g. the encoder levels
            (strides 32, 16, 8).
    Returns:
        [N] bool over the grids' cells (concatenated in order), None = all.
    """
    if keep_mask is None:
        return None
    mask = keep_mask.reshape(1, 1, *grid).float()
    levels = []
    for height, width in spatial_shapes:
        if (height, width) == grid:
            level = mask
        elif height > grid[0]:  # finer: each patch covers a block of pixels
            level = F.interpolate(mask, size=(height, width), mode="nearest")
        else:  # coarser: a pixel is kept when any patch under it is
            level = F.adaptive_max_pool2d(mask, (height, width))
        levels.append(level.flatten())
    return torch.cat(levels) > 0


def relative_change(inputs: Tensor, reference: Tensor) -> Tensor:
    """[1, N, C] x2 -> [N] per-token mean |delta| over the reference's mean deviation from its
    per-channel mean. The scale makes the threshold independent of the feature scale, and leaving
    out the channel means (biases, position-independent content) makes two unrelated frames
    score about 1 or more whatever the weights."""
    scale = (reference - reference.mean(1, keepdim=True)).abs().mean().clamp_min(1e-6)
    return (inputs - reference).abs().mean(-1)[0] / scale


def select_queries(change: Tensor, kept: Tensor | None, settings: TemporalReuse) -> Tensor:
    """Sorted indices of the tokens to recompute: candidates (ViT-kept, or changed by at least the
    threshold), at most `budget * N` of them, ViT-kept first, then by largest change.

    Args:
        change: [N] relative change; kept: [N] bool or None (no keep mask: nothing is ViT-kept).
    Returns:
        [M] int64 ascending.
    """
    num_tokens = change.shape[0]
    kept = torch.zeros_like(change, dtype=torch.bool) if kept is None else kept
    candidates = kept | (change >= settings.change_threshold)
    limit = int(settings.budget * num_tokens)
    count = min(int(candidates.sum()), limit)
    if count == int(candidates.sum()):
        return candidates.nonzero().squeeze(1)
    # Kept tokens outrank every other one: their priority is shifted above the largest change.
    priority = change + kept.to(change.dtype) * (change.max() + 1)
    priority = priority.masked_fill(~candidates, -1.0)
    return priority.topk(count, sorted=False).indices.sort().values


def needs_refresh(cache: PixelDecoderCache | None, spatial_shapes: list[tuple[int, int]], change: float | None,
                  settings: TemporalReuse) -> bool:
    """A dense frame: no usable cache, the refresh period is over, or a shot cut."""
    if cache is None or cache.spatial_shapes != spatial_shapes:
        return True
    if cache.age + 1 >= settings.refresh_every:
        return True
    if change is not None and change > settings.cut_threshold:
        logger.debug("shot cut (mean input change %.3f > %.3f): dense refresh", change, settings.cut_threshold)
        return True
    return False


def gather_rows(tokens: Tensor, indices: Tensor) -> Tensor:
    """[1, N, C] -> [1, M, C] the rows `indices`; a reference-points tensor [1, N, 1, 2] works too."""
    return tokens.index_select(1, indices)


def scatter_rows(base: Tensor, indices: Tensor, rows: Tensor) -> Tensor:
    """A copy of `base` [1, N, C] with rows `indices` replaced by `rows` [1, M, C]."""
    return base.index_copy(1, indices, rows)
