"""Mask2Former's multi-scale deformable-attention pixel decoder (mmdet 3.0.0rc5 structure).

The three coarsest backbone maps (strides 32, 16, 8) are projected to `feat_channels`, refined
jointly by a post-norm deformable-attention encoder, split back into maps, and the stride-4 map
is merged in by one FPN step that produces the per-pixel mask features.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vppcli.config import HeadConfig
from vppcli.model.deform_attn import MSDeformAttn
from vppcli.model.position_encoding import sine_position_encoding
from vppcli.model.temporal_reuse import (
    FPN_TILE,
    PixelDecoderCache,
    ReuseOutcome,
    TemporalReuse,
    gather_rows,
    kept_on_grids,
    needs_refresh,
    relative_change,
    scatter_rows,
    select_queries,
)
from vppcli.model.tile_conv import conv_tiles, scatter_tiles, take_tiles, tile_change, tile_grid


class FFN(nn.Module):
    """Two-layer ReLU MLP; the residual is added by the caller."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        """[..., C] -> [..., C]."""
        return self.fc2(self.act(self.fc1(x)))


class ConvGN(nn.Module):
    """Conv2d + GroupNorm, optionally followed by ReLU (mmcv `ConvModule` with GN)."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, bias: bool, groups: int, relu: bool = False
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=bias)
        self.gn = nn.GroupNorm(groups, out_channels)
        self.act = nn.ReLU() if relu else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        """[B, C_in, H, W] -> [B, C_out, H, W]."""
        return self.act(self.gn(self.conv(x)))


class DeformableEncoderLayer(nn.Module):
    """Post-norm layer: deformable self-attention over all levels, then FFN, each + residual + LN."""

    def __init__(self, dim: int, num_heads: int, num_levels: int, num_points: int, ffn_dim: int) -> None:
        super().__init__()
        self.self_attn = MSDeformAttn(dim, num_heads, num_levels, num_points)
        self.norm1 = nn.LayerNorm(dim)
        self.ffn = FFN(dim, ffn_dim)
        self.norm2 = nn.LayerNorm(dim)

    def forward(
        self, query: Tensor, query_pos: Tensor, reference_points: Tensor, spatial_shapes: list[tuple[int, int]]
    ) -> Tensor:
        """
        Args:
            query: [B, N, C] tokens of all levels; also the attention values.
            query_pos: [B, N, C] positional + level encoding (added to the query only).
            reference_points: [B or 1, N, 1, 2] normalised (x, y) pixel centres.
            spatial_shapes: [(H_l, W_l)] of the levels in token order.
        Returns:
            [B, N, C] refined tokens.
        """
        # mmcv's attention residual is the query *without* its positional encoding.
        attended = self.self_attn(query + query_pos, reference_points, query, spatial_shapes)
        query = self.norm1(query + attended)
        return self.norm2(query + self.ffn(query))

    def forward_rows(self, query: Tensor, query_pos: Tensor, reference_points: Tensor,
                     spatial_shapes: list[tuple[int, int]], indices: Tensor) -> Tensor:
        """The layer for the queries `indices` [M] alone (batch 1): [1, M, C]. The attention's
        values are the whole map `query` [1, N, C]; the other arguments as in `forward`."""
        rows = gather_rows(query, indices)
        attended = self.self_attn(rows + gather_rows(query_pos, indices), gather_rows(reference_points, indices),
                                  query, spatial_shapes)
        rows = self.norm1(rows + attended)
        return self.norm2(rows + self.ffn(rows))


class DeformableEncoder(nn.Module):
    """Stack of `DeformableEncoderLayer`s (no final norm: the layers are post-norm)."""

    def __init__(self, cfg: HeadConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            DeformableEncoderLayer(
                cfg.feat_channels,
                cfg.num_encoder_heads,
                cfg.num_feature_levels,
                cfg.num_encoder_points,
                cfg.encoder_ffn_dim,
            )
            for _ in range(cfg.num_encoder_layers)
        )

    def forward(
        self, query: Tensor, query_pos: Tensor, reference_points: Tensor, spatial_shapes: list[tuple[int, int]]
    ) -> Tensor:
        """[B, N, C] tokens of all levels -> [B, N, C] (arguments as in `DeformableEncoderLayer`)."""
        for layer in self.layers:
            query = layer(query, query_pos, reference_points, spatial_shapes)
        return query

    def forward_layers(self, query: Tensor, query_pos: Tensor, reference_points: Tensor,
                       spatial_shapes: list[tuple[int, int]], indices: Tensor | None = None,
                       previous: list[Tensor] | None = None) -> list[Tensor]:
        """Every layer's output [1, N, C] (the temporal-reuse cache). With `indices` [M], only those
        queries are recomputed and the others are taken from `previous` (each layer's output on
        the previous frame); without, all are (the same arithmetic as `forward`)."""
        outputs = []
        for index, layer in enumerate(self.layers):
            if indices is None:
                query = layer(query, query_pos, reference_points, spatial_shapes)
            else:
                assert previous is not None
                rows = layer.forward_rows(query, query_pos, reference_points, spatial_shapes, indices)
                query = scatter_rows(previous[index], indices, rows)
            outputs.append(query)
        return outputs


def pixel_centres(spatial_shapes: Sequence[tuple[int, int]], device: torch.device, dtype: torch.dtype) -> Tensor:
    """Normalised (x, y) centres of every pixel of every level, row-major: [1, N, 1, 2]."""
    centres = []
    for height, width in spatial_shapes:
        ys = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) / height
        xs = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) / width
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        centres.append(torch.stack((grid_x.flatten(), grid_y.flatten()), dim=-1))
    return torch.cat(centres).to(dtype)[None, :, None, :]


class MSDeformAttnPixelDecoder(nn.Module):
    """Pixel decoder of Mask2Former. Input levels are strides 4, 8, 16, 32; the deformable
    encoder runs on the last `cfg.num_feature_levels` of them, coarsest first."""

    def __init__(self, in_channels: int, cfg: HeadConfig) -> None:
        super().__init__()
        channels, groups = cfg.feat_channels, cfg.gn_groups
        self.num_levels = cfg.num_feature_levels
        self.input_convs = nn.ModuleList(
            ConvGN(in_channels, channels, 1, bias=True, groups=groups) for _ in range(self.num_levels)
        )
        self.encoder = DeformableEncoder(cfg)
        self.level_encoding = nn.Embedding(self.num_levels, channels)
        self.lateral_convs = nn.ModuleList([ConvGN(in_channels, channels, 1, bias=False, groups=groups)])
        self.output_convs = nn.ModuleList([ConvGN(channels, channels, 3, bias=False, groups=groups, relu=True)])
        self.mask_feature = nn.Conv2d(channels, channels, 1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # mmdet's scheme: xavier everywhere, N(0, 1) level encoding, then the deformable
        # attention's own initialisation on top of the generic one.
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        nn.init.normal_(self.level_encoding.weight)
        for layer in self.encoder.layers:
            layer.self_attn.reset_parameters()

    def forward(self, features: Sequence[Tensor]) -> tuple[Tensor, list[Tensor]]:
        """
        Args:
            features: backbone maps [B, D, H/4, W/4], [B, D, H/8, W/8], [B, D, H/16, W/16],
                [B, D, H/32, W/32] (H, W: padded image size).
        Returns:
            mask_features: [B, C, H/4, W/4] per-pixel embeddings for the mask einsum.
            memories: encoder maps [[B, C, H/32, W/32], [B, C, H/16, W/16], [B, C, H/8, W/8]]
                (coarsest first, the order the transformer decoder cycles through).
        """
        query, query_pos, spatial_shapes = self._encoder_inputs(features)
        reference_points = pixel_centres(spatial_shapes, query.device, query.dtype)
        memory = self.encoder(query, query_pos, reference_points, spatial_shapes)
        return self._outputs(features, memory, spatial_shapes)

    def forward_reuse(self, features: Sequence[Tensor], settings: TemporalReuse, cache: PixelDecoderCache | None,
                      keep_mask: Tensor | None, grid: tuple[int, int]
                      ) -> tuple[Tensor, list[Tensor], PixelDecoderCache, ReuseOutcome]:
        """`forward` with sparse temporal reuse in the deformable encoder and the FPN convolution
        (batch 1; see `vppcli.model.temporal_reuse`).

        Args:
            features: as in `forward`.
            settings: the mode's budget and thresholds.
            cache: the previous frame's states (None: a video's first frame).
            keep_mask: [1, H*W] bool patches the last ViT block processed (None = all).
            grid: (H, W) the stride-16 patch grid.
        Returns:
            mask_features and memories as in `forward`, the states for the next frame, and what
            was recomputed.
        """
        query, query_pos, spatial_shapes = self._encoder_inputs(features)
        if query.shape[0] != 1:
            raise ValueError("temporal reuse streams one frame at a time (batch 1)")
        usable = cache is not None and cache.spatial_shapes == spatial_shapes
        change = relative_change(query, cache.reference) if cache is not None and usable else None
        mean_change = 0.0 if change is None else float(change.mean())
        previous = None if change is None or needs_refresh(cache, spatial_shapes, mean_change, settings) else cache
        kept = kept_on_grids(keep_mask, grid, spatial_shapes)
        outputs, reference, queries = self._reuse_encoder(query, query_pos, spatial_shapes, change, kept, settings,
                                                          previous)
        memories = self._memories(outputs[-1], spatial_shapes)
        merged = self._fpn_input(features, memories)
        rows, cols = tile_grid(merged.shape[-2], merged.shape[-1], FPN_TILE)
        conv, fpn_reference, tiles = self._reuse_fpn(merged, kept_on_grids(keep_mask, grid, [(rows, cols)]), settings,
                                                     previous)
        output_conv = self.output_convs[0]
        # The GroupNorm's statistics are the whole map's, so it (and what follows) runs densely.
        mask_features = self.mask_feature(output_conv.act(output_conv.gn(conv)))
        age = 0 if previous is None else previous.age + 1
        new_cache = PixelDecoderCache(reference, outputs, spatial_shapes, fpn_reference, conv, age)
        outcome = ReuseOutcome(queries, query.shape[1], tiles * FPN_TILE**2, rows * cols * FPN_TILE**2,
                               previous is None, mean_change)
        return mask_features, memories, new_cache, outcome

    def _reuse_encoder(self, query: Tensor, query_pos: Tensor, spatial_shapes: list[tuple[int, int]],
                       change: Tensor | None, kept: Tensor | None, settings: TemporalReuse,
                       previous: PixelDecoderCache | None) -> tuple[list[Tensor], Tensor, int]:
        """Every encoder layer's output [1, N, C], the new change reference [1, N, C] and the
        queries recomputed per layer; all of them when `previous` is None (a refresh)."""
        reference_points = pixel_centres(spatial_shapes, query.device, query.dtype)
        if previous is None:
            return self.encoder.forward_layers(query, query_pos, reference_points, spatial_shapes), query, query.shape[1]
        assert change is not None
        indices = select_queries(change, kept, settings)
        outputs = self.encoder.forward_layers(query, query_pos, reference_points, spatial_shapes, indices,
                                              previous.layer_outputs)
        reference = scatter_rows(previous.reference, indices, gather_rows(query, indices))
        return outputs, reference, int(indices.numel())

    def _reuse_fpn(self, merged: Tensor, kept: Tensor | None, settings: TemporalReuse,
                   previous: PixelDecoderCache | None) -> tuple[Tensor, Tensor, int]:
        """The FPN convolution's output [1, C, H/4, W/4] (before its GroupNorm) on the tiles that
        changed or that the ViT kept, the previous frame's elsewhere; the new change reference;
        the tiles computed. All tiles when `previous` is None."""
        conv = self.output_convs[0].conv
        if previous is None:
            rows, cols = tile_grid(merged.shape[-2], merged.shape[-1], FPN_TILE)
            return conv(merged), merged, rows * cols
        chosen = select_queries(tile_change(merged, previous.fpn_reference, FPN_TILE), kept, settings)
        output = scatter_tiles(previous.fpn_conv, FPN_TILE, chosen, conv_tiles(conv, merged, FPN_TILE, chosen))
        reference = scatter_tiles(previous.fpn_reference, FPN_TILE, chosen, take_tiles(merged, FPN_TILE, chosen))
        return output, reference, int(chosen.numel())

    def _encoder_inputs(self, features: Sequence[Tensor]) -> tuple[Tensor, Tensor, list[tuple[int, int]]]:
        """The encoder's tokens [B, N, C] and positional + level encodings [B, N, C] of all levels
        (coarsest first), and the levels' (H_l, W_l)."""
        if len(features) != self.num_levels + 1:
            raise ValueError(f"expected {self.num_levels + 1} feature maps, got {len(features)}")
        encoder_inputs = features[::-1][: self.num_levels]  # coarsest first
        tokens, positions, spatial_shapes = [], [], []
        for level, feature in enumerate(encoder_inputs):
            projected = self.input_convs[level](feature)
            batch, channels, height, width = projected.shape
            pos = sine_position_encoding(batch, height, width, channels // 2, projected.device, projected.dtype)
            pos = pos + self.level_encoding.weight[level].view(1, -1, 1, 1)
            tokens.append(projected.flatten(2).transpose(1, 2))
            positions.append(pos.flatten(2).transpose(1, 2))
            spatial_shapes.append((height, width))
        return torch.cat(tokens, dim=1), torch.cat(positions, dim=1), spatial_shapes

    def _outputs(self, features: Sequence[Tensor], memory: Tensor, spatial_shapes: list[tuple[int, int]]
                 ) -> tuple[Tensor, list[Tensor]]:
        """The encoder output [B, N, C] split into maps, and the FPN step (see `forward`)."""
        memories = self._memories(memory, spatial_shapes)
        mask_features = self.mask_feature(self.output_convs[0](self._fpn_input(features, memories)))
        return mask_features, memories

    @staticmethod
    def _memories(memory: Tensor, spatial_shapes: list[tuple[int, int]]) -> list[Tensor]:
        """The encoder output [B, N, C] as maps [B, C, H_l, W_l] (coarsest first)."""
        batch, _, channels = memory.shape
        # Memories and the FPN step stay channels-last: a level's tokens [B, H*W, C] *are* an
        # NHWC map, so the memories are views (no transpose copy per level), the decoder's
        # flatten(2).transpose(1, 2) of them is a view again, and oneDNN runs the stride-4 3x3
        # convolution channels-last about 15 % faster than NCHW (measured on an AVX-512 CPU).
        return [
            level_tokens.view(batch, height, width, channels).permute(0, 3, 1, 2)
            for level_tokens, (height, width) in zip(
                memory.split([h * w for h, w in spatial_shapes], dim=1), spatial_shapes
            )
        ]

    def _fpn_input(self, features: Sequence[Tensor], memories: list[Tensor]) -> Tensor:
        """The stride-4 lateral map plus the upsampled finest memory: [B, C, H/4, W/4]."""
        lateral = self.lateral_convs[0](features[0].contiguous(memory_format=torch.channels_last))
        return lateral + F.interpolate(memories[-1], size=lateral.shape[-2:], mode="bilinear", align_corners=False)
