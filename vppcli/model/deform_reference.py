"""The previous deformable-attention sampling, kept as the yardstick for the fast one.

This is the `grid_sample` formulation of mmcv's `multi_scale_deformable_attn_pytorch` (the one
vppcli used before, checked against the authors' code): per level, the values are laid out as
`[B*heads, head_dim, H, W]` maps and sampled at `2 * loc - 1` with bilinear interpolation, zero
padding and `align_corners=False`. `vpp bench` times it against `deformable_sample`, and the
tests compare the two on every shape the model uses.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

if TYPE_CHECKING:
    from vppcli.model.deform_attn import MSDeformAttn


def grid_sample_deformable(values: Tensor, spatial_shapes: list[tuple[int, int]], locations: Tensor,
                           weights: Tensor) -> Tensor:
    """
    Args:
        values: [B, Nv, heads, head_dim] projected values of all levels.
        spatial_shapes: [(H_l, W_l)] * L in the order of `values`.
        locations: [B, Nq, heads, L, P, 2] normalised (x, y) sampling locations.
        weights: [B, Nq, heads, L, P] attention weights.
    Returns:
        [B, Nq, heads * head_dim].
    """
    batch, _, heads, head_dim = values.shape
    num_queries, points = locations.shape[1], locations.shape[4]
    grids = 2.0 * locations - 1.0
    output = values.new_zeros(batch * heads, head_dim, num_queries)
    start = 0
    for level, (height, width) in enumerate(spatial_shapes):
        end = start + height * width
        level_values = values[:, start:end].permute(0, 2, 3, 1).reshape(batch * heads, head_dim, height, width)
        level_grid = grids[:, :, :, level].transpose(1, 2).reshape(batch * heads, num_queries, points, 2)
        sampled = F.grid_sample(level_values, level_grid.to(level_values.dtype), mode="bilinear",
                                padding_mode="zeros", align_corners=False)  # [B*heads, head_dim, Nq, P]
        level_weights = weights[:, :, :, level].transpose(1, 2).reshape(batch * heads, 1, num_queries, points)
        output = output + (sampled * level_weights.to(sampled.dtype)).sum(-1)
        start = end
    return output.view(batch, heads * head_dim, num_queries).transpose(1, 2)


def grid_sample_forward(module: MSDeformAttn, query: Tensor, reference_points: Tensor, value: Tensor,
                        spatial_shapes: list[tuple[int, int]]) -> Tensor:
    """`module.forward` as it was computed before: separate projections and `grid_sample`."""
    batch, num_queries, channels = query.shape
    heads, levels, points = module.num_heads, module.num_levels, module.num_points
    values = module.value_proj(value).view(batch, -1, heads, channels // heads)
    offsets = module.sampling_offsets(query).view(batch, num_queries, heads, levels, points, 2)
    weights = module.attention_weights(query).view(batch, num_queries, heads, levels * points)
    weights = weights.softmax(-1).view(batch, num_queries, heads, levels, points)
    sizes = torch.tensor([[w, h] for h, w in spatial_shapes], dtype=query.dtype, device=query.device)
    locations = reference_points[:, :, None, :, None, :] + offsets / sizes[None, None, None, :, None, :]
    return module.output_proj(grid_sample_deformable(values, spatial_shapes, locations, weights))
