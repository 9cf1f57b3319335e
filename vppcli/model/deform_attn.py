"""Multi-scale deformable attention (Deformable DETR) in pure PyTorch.

Numerically this is mmcv's `MultiScaleDeformableAttention` with `batch_first=True`: bilinear
sampling with zero padding and the `align_corners=False` convention (pixel x = loc * W - 0.5),
weighted by the attention weights and summed over levels and points. The identity residual that
mmcv adds inside the module is *not* added here: callers add it explicitly, so every residual in
the model is visible where it happens.

How it is computed (and why not with `grid_sample`): each (query, head) output is a weighted
sum of `levels * points * 4` rows of the projected values (the four bilinear corners of every
sampling point), with weight = bilinear corner weight x attention weight. That is exactly one
`embedding_bag(mode="sum", per_sample_weights=...)` over a table whose rows are the values of
one (batch, position, head): the value projection's output already is that table, so nothing is
permuted, and no `[heads, dim, queries, points]` tensor is ever built. `grid_sample` did the same
arithmetic through per-level layout changes and a sampled tensor per level, and was memory-bound
on CPU. Corners outside the map keep a valid (clamped) row index with weight 0, which is what
zero padding means. The result is differentiable w.r.t. the values (through the table), the
attention weights and the sampling offsets (through the corner weights), on CPU and CUDA.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Row indices fit int32 (half the index traffic of int64) unless the table is huge.
_INT32_ROWS = 2**31 - 1


@dataclass(frozen=True)
class SlotGeometry:
    """Per sampling slot k (order: head, level, point; K = heads * levels * points), [K] each."""

    last_col: Tensor  # W_l - 1 of the slot's level
    last_row: Tensor  # H_l - 1
    row_base: Tensor  # table row of (level start, head): start_l * heads + head
    row_stride: Tensor  # table rows between two image rows: W_l * heads


def slot_geometry(spatial_shapes: list[tuple[int, int]], heads: int, points: int, device: torch.device,
                  dtype: torch.dtype) -> SlotGeometry:
    """The slot tables in `dtype` (for row numbers: a float type that holds them exactly)."""
    starts = [0]
    for height, width in spatial_shapes[:-1]:
        starts.append(starts[-1] + height * width)

    def per_slot(per_level: list[int]) -> Tensor:  # [heads, L * points]
        return torch.tensor(per_level, dtype=dtype, device=device).repeat_interleave(points).repeat(heads, 1)

    head_index = torch.arange(heads, dtype=dtype, device=device).view(heads, 1)
    return SlotGeometry(
        last_col=per_slot([w - 1 for _, w in spatial_shapes]).flatten(),
        last_row=per_slot([h - 1 for h, _ in spatial_shapes]).flatten(),
        row_base=(per_slot(starts) * heads + head_index).flatten(),
        row_stride=per_slot([w * heads for _, w in spatial_shapes]).flatten(),
    )


def level_reference(reference_points: Tensor, spatial_shapes: list[tuple[int, int]]) -> Tensor:
    """Reference points in pixels of every level (`loc * size - 0.5`, the align_corners=False
    convention of `grid_sample` and mmcv's CUDA kernel).

    Args:
        reference_points: [B, Nq, 1 or L, 2] normalised (x, y).
    Returns:
        [2 (x, y), B, Nq, L] float32.
    """
    levels = len(spatial_shapes)
    if reference_points.shape[2] not in (1, levels):
        raise ValueError(f"reference points have {reference_points.shape[2]} levels, expected 1 or {levels}")
    sizes = torch.tensor([[w, h] for h, w in spatial_shapes], dtype=torch.float32, device=reference_points.device)
    pixels = reference_points.float() * sizes - 0.5  # [B, Nq, L, 2]
    return pixels.permute(3, 0, 1, 2)


def _slot_selector(heads: int, levels: int, points: int, device: torch.device) -> Tensor:
    """[L, K] one-hot: slot k (head, level, point order) belongs to level l. Multiplying by it
    spreads per-level values over the slots inside a matmul, exactly (products with 0 and 1)."""
    eye = torch.eye(levels, dtype=torch.float32, device=device)
    return eye.view(levels, 1, levels, 1).expand(levels, heads, levels, points).reshape(levels, -1)


def _small_softmax(logits: Tensor) -> Tensor:
    """Softmax over a short last axis (L * points entries). torch's softmax kernel vectorises
    along that axis and is ~6x slower than these four elementwise passes for 12 entries."""
    shifted = (logits - logits.detach().amax(-1, keepdim=True)).exp()
    return shifted / shifted.sum(-1, keepdim=True)


def _axis_corners(pixel: Tensor, last: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The two neighbours of each coordinate along one axis and their linear weights.

    Args:
        pixel: [B, Nq, K] coordinates in pixels.
        last: [K] last valid pixel index of each slot's level.
    Returns:
        lower and upper neighbour clamped into the map (integral floats), and their weights
        1 - frac and frac, zero where the neighbour lies outside the map (zero padding); [B, Nq, K]
        each.
    """
    low = pixel.detach().floor()  # the weights carry the gradient w.r.t. the location
    frac = pixel - low
    high = low + 1
    first = torch.zeros_like(last)
    low_in = torch.clamp(low, min=first, max=last)
    high_in = torch.clamp(high, min=first, max=last)
    return low_in, high_in, torch.where(low_in == low, 1 - frac, 0.0), torch.where(high_in == high, frac, 0.0)


def deformable_sample(values: Tensor, spatial_shapes: list[tuple[int, int]], pixel_x: Tensor, pixel_y: Tensor,
                      weights: Tensor, num_points: int) -> Tensor:
    """Bilinear samples of every (head, level, point) slot, weighted and summed per head.

    Args:
        values: [B, Nv, heads, head_dim] projected values of all levels.
        spatial_shapes: [(H_l, W_l)] * L in the order of `values`.
        pixel_x, pixel_y: [B, Nq, K] float32 sampling locations in pixels of their level
            (align_corners=False convention), K = heads * L * points in (head, level, point) order.
        weights: [B, Nq, K] float32 attention weights (softmax already applied).
    Returns:
        [B, Nq, heads * head_dim], in the dtype of `values`.
    """
    batch, num_values, heads, head_dim = values.shape
    num_queries, slots_per_head = pixel_x.shape[1], pixel_x.shape[2] // heads
    total_rows = batch * num_values * heads
    # Row numbers are computed in floating point (exact below 2**24 in float32) and converted
    # to integers once, at the end.
    exact = torch.float32 if total_rows < 2**24 else torch.float64
    slots = slot_geometry(spatial_shapes, heads, num_points, values.device, exact)

    x_low, x_high, wx_low, wx_high = _axis_corners(pixel_x, slots.last_col)
    y_low, y_high, wy_low, wy_high = _axis_corners(pixel_y, slots.last_row)
    wy_low, wy_high = wy_low * weights, wy_high * weights
    batch_base = torch.arange(batch, dtype=exact, device=values.device).view(batch, 1, 1) * (num_values * heads)
    base = slots.row_base + batch_base  # [B, 1, K]
    row_low = torch.addcmul(base, y_low.to(exact), slots.row_stride)
    row_high = torch.addcmul(base, y_high.to(exact), slots.row_stride)
    col_low, col_high = x_low.to(exact) * heads, x_high.to(exact) * heads

    # One bag per (query, head), laid out [4 corners, L * points]. Every op above runs on
    # [B, Nq, K] with K contiguous; the corner axis only appears here, in one copy per tensor
    # (measured faster than broadcasting over a size-2 axis or than a slot-major layout).
    def bags(corners: list[Tensor]) -> Tensor:
        stacked = torch.stack([c.view(batch, num_queries, heads, slots_per_head) for c in corners], dim=3)
        return stacked.view(batch * num_queries * heads, 4 * slots_per_head)

    table_rows = bags([row_low + col_low, row_low + col_high, row_high + col_low, row_high + col_high])
    corner_weights = bags([wy_low * wx_low, wy_low * wx_high, wy_high * wx_low, wy_high * wx_high])
    table = values.reshape(total_rows, head_dim)
    index_dtype = torch.int32 if total_rows <= _INT32_ROWS else torch.int64
    out = F.embedding_bag(table_rows.to(index_dtype), table, mode="sum",
                          per_sample_weights=corner_weights.to(table.dtype))
    return out.view(batch, num_queries, heads * head_dim)


class MSDeformAttn(nn.Module):
    """Each query attends to `num_points` sampled locations per head and level around its
    reference point; offsets and weights are predicted from the query."""

    def __init__(self, embed_dim: int, num_heads: int, num_levels: int, num_points: int) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.num_levels = num_levels
        self.num_points = num_points
        self.sampling_offsets = nn.Linear(embed_dim, num_heads * num_levels * num_points * 2)
        self.attention_weights = nn.Linear(embed_dim, num_heads * num_levels * num_points)
        self.value_proj = nn.Linear(embed_dim, embed_dim)
        self.output_proj = nn.Linear(embed_dim, embed_dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Deformable DETR's init: offsets start on a ring of directions, one per head, with
        # point i at distance i+1, so an untrained module already looks around its reference.
        nn.init.zeros_(self.sampling_offsets.weight)
        angles = torch.arange(self.num_heads, dtype=torch.float32) * (2.0 * math.pi / self.num_heads)
        ring = torch.stack([angles.cos(), angles.sin()], -1)
        ring = ring / ring.abs().max(-1, keepdim=True)[0]
        ring = ring.view(self.num_heads, 1, 1, 2).repeat(1, self.num_levels, self.num_points, 1)
        ring = ring * torch.arange(1, self.num_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(ring.flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for proj in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(proj.weight)
            nn.init.zeros_(proj.bias)

    def _geometry_projection(self) -> tuple[Tensor, Tensor]:
        """Offsets (x block, then y block) and attention logits as one linear layer, so one
        matmul over the queries yields all three as contiguous slot-major blocks [.., 3K]."""
        slots = self.num_heads * self.num_levels * self.num_points
        offsets_w = self.sampling_offsets.weight.view(slots, 2, -1).transpose(0, 1).reshape(2 * slots, -1)
        offsets_b = self.sampling_offsets.bias.view(slots, 2).t().reshape(-1)
        return (torch.cat([offsets_w, self.attention_weights.weight]),
                torch.cat([offsets_b, self.attention_weights.bias]))

    def forward(
        self,
        query: Tensor,
        reference_points: Tensor,
        value: Tensor,
        spatial_shapes: list[tuple[int, int]],
    ) -> Tensor:
        """
        Args:
            query: [B, Nq, C] queries (positional embedding already added, if any).
            reference_points: [B, Nq, 1 or L, 2] normalised (x, y) in [0, 1].
            value: [B, Nv, C] flattened maps of all levels, Nv = sum(H_l * W_l).
            spatial_shapes: [(H_l, W_l)] * L, in the order the levels appear in `value`.
        Returns:
            [B, Nq, C] attended features (output projection applied, no residual).
        """
        batch, num_queries, channels = query.shape
        heads, levels, points = self.num_heads, self.num_levels, self.num_points
        if len(spatial_shapes) != levels:
            raise ValueError(f"expected {levels} levels, got {len(spatial_shapes)}")
        covered = sum(h * w for h, w in spatial_shapes)
        if covered != value.shape[1]:
            raise ValueError(f"spatial_shapes cover {covered} values, value has {value.shape[1]}")
        slots = heads * levels * points

        values = self.value_proj(value).view(batch, covered, heads, channels // heads)
        geometry = F.linear(query, *self._geometry_projection())
        # Geometry in float32 even under bf16 autocast: a bf16 pixel coordinate is off by up to
        # half a pixel on a 120-pixel-wide map.
        with torch.autocast(query.device.type, enabled=False):
            offset_x, offset_y, logits = geometry.float().split(slots, dim=-1)
            weights = _small_softmax(logits.reshape(batch, num_queries, heads, levels * points))
            ref_x, ref_y = level_reference(reference_points, spatial_shapes).expand(-1, batch, -1, -1)
            selector = _slot_selector(heads, levels, points, query.device).expand(batch, -1, -1)
            pixel_x = torch.baddbmm(offset_x, ref_x, selector)  # offset + reference of the slot's level
            pixel_y = torch.baddbmm(offset_y, ref_y, selector)
            output = deformable_sample(values, spatial_shapes, pixel_x, pixel_y,
                                       weights.view(batch, num_queries, slots), points)
        return self.output_proj(output)
