"""Multi-scale deformable attention (Deformable DETR) in pure PyTorch.

Numerically this is mmcv's `MultiScaleDeformableAttention` with `batch_first=True`, evaluated
with bilinear `grid_sample` per level (the formulation mmcv itself uses off-GPU). The identity
residual that mmcv adds inside the module is *not* added here: callers add it explicitly, so
every residual in the model is visible where it happens.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


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
        head_dim = channels // heads
        if len(spatial_shapes) != levels:
            raise ValueError(f"expected {levels} levels, got {len(spatial_shapes)}")

        values = self.value_proj(value)
        offsets = self.sampling_offsets(query).view(batch, num_queries, heads, levels, points, 2)
        weights = self.attention_weights(query).view(batch, num_queries, heads, levels * points)
        weights = weights.softmax(-1).view(batch, num_queries, heads, levels, points)

        sizes = torch.tensor([[w, h] for h, w in spatial_shapes], dtype=query.dtype, device=query.device)
        locations = reference_points[:, :, None, :, None, :] + offsets / sizes[None, None, None, :, None, :]
        grids = 2.0 * locations - 1.0  # grid_sample's [-1, 1] convention

        output = query.new_zeros(batch * heads, head_dim, num_queries)
        start = 0
        for level, (height, width) in enumerate(spatial_shapes):
            end = start + height * width
            level_values = values[:, start:end].reshape(batch, height * width, heads, head_dim)
            level_values = level_values.permute(0, 2, 3, 1).reshape(batch * heads, head_dim, height, width)
            level_grid = grids[:, :, :, level].transpose(1, 2).reshape(batch * heads, num_queries, points, 2)
            sampled = F.grid_sample(
                level_values, level_grid.to(level_values.dtype), mode="bilinear",
                padding_mode="zeros", align_corners=False,
            )  # [B*heads, head_dim, Nq, points]
            level_weights = weights[:, :, :, level].transpose(1, 2).reshape(batch * heads, 1, num_queries, points)
            output = output + (sampled * level_weights.to(sampled.dtype)).sum(-1)
            start = end
        if start != value.shape[1]:
            raise ValueError(f"spatial_shapes cover {start} values, value has {value.shape[1]}")
        output = output.view(batch, heads * head_dim, num_queries).transpose(1, 2)
        return self.output_proj(output)
