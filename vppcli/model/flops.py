"""Analytical FLOPs of one frame (2 x multiply-accumulates of matmuls, convolutions, attention
and deformable sampling; norms, activations and softmax are ignored, as is customary).

The ViT blocks are counted on the tokens they actually processed, so pruning shows up here
exactly as it does in the compute; so are the pixel decoder's encoder queries and its FPN
convolution's pixels under temporal reuse (the encoder's value projections, the 1x1 convolutions
and the norms still run on every token and pixel).
"""

from __future__ import annotations

from dataclasses import dataclass

from vppcli.config import VppConfig

# Bilinear sampling reads 4 neighbours and weighs them; the attention weight is one more.
_SAMPLE_MACS = 5


@dataclass(frozen=True)
class FrameFlops:
    patch_embed: float
    vit_blocks: float
    spatial_prior: float
    adapter: float
    pruning: float
    pixel_decoder: float
    transformer_decoder: float

    @property
    def backbone(self) -> float:
        return self.patch_embed + self.vit_blocks + self.spatial_prior + self.adapter + self.pruning

    @property
    def head(self) -> float:
        return self.pixel_decoder + self.transformer_decoder

    @property
    def total(self) -> float:
        return self.backbone + self.head

    def as_gflops(self) -> dict[str, float]:
        parts = {
            "patch_embed": self.patch_embed, "vit_blocks": self.vit_blocks,
            "spatial_prior": self.spatial_prior, "adapter": self.adapter, "pruning": self.pruning,
            "pixel_decoder": self.pixel_decoder, "transformer_decoder": self.transformer_decoder,
            "backbone": self.backbone, "head": self.head, "total": self.total,
        }
        return {name: value / 1e9 for name, value in parts.items()}


def vit_block_macs(num_tokens: int, dim: int, mlp_ratio: float) -> tuple[int, int]:
    """(linear, attention) multiply-accumulates of one ViT block on `num_tokens` tokens."""
    hidden = int(dim * mlp_ratio)
    linear = num_tokens * (4 * dim * dim + 2 * dim * hidden)
    attention = 2 * num_tokens * num_tokens * dim
    return linear, attention


def _conv_macs(out_pixels: int, in_ch: int, out_ch: int, kernel: int, groups: int = 1) -> int:
    return out_pixels * out_ch * (in_ch // groups) * kernel * kernel


def _msda_macs(num_queries: int, num_values: int, dim: int, heads: int, levels: int, points: int) -> int:
    """Query projections (offsets, weights, output) on `num_queries`, value projection on
    `num_values`, and the bilinear sampling of every query."""
    projections = num_queries * dim * (heads * levels * points * 3) + num_values * dim * dim + num_queries * dim * dim
    return projections + num_queries * levels * points * dim * _SAMPLE_MACS


def frame_flops(config: VppConfig, padded_size: tuple[int, int], tokens_per_block: list[int],
                num_track_queries: int = 0, map_candidates: int | None = None,
                encoder_queries: int | None = None, fpn_pixels: int | None = None) -> FrameFlops:
    """
    Args:
        padded_size: (Hp, Wp) network input.
        tokens_per_block: tokens each ViT block processed.
        num_track_queries: K track queries appended to the static ones.
        map_candidates: previous-frame tokens the Map-SM compared against (None: it did not run).
        encoder_queries: pixel-decoder encoder queries recomputed per layer (temporal reuse;
            None = all).
        fpn_pixels: stride-4 pixels the FPN's 3x3 convolution computed (temporal reuse; None = all).
    """
    vit, adapter, head = config.vit, config.adapter, config.head
    dim = vit.embed_dim
    padded_h, padded_w = padded_size
    height, width = padded_h // 16, padded_w // 16
    num_tokens = height * width
    num_c = 4 * num_tokens + num_tokens + num_tokens // 4

    patch_embed = num_tokens * dim * 3 * vit.patch_size**2
    vit_blocks = sum(sum(vit_block_macs(n, dim, vit.mlp_ratio)) for n in tokens_per_block)

    inplane = adapter.conv_inplane
    s2, s4, s8, s16, s32 = (padded_h * padded_w // (s * s) for s in (2, 4, 8, 16, 32))
    spatial_prior = (
        _conv_macs(s2, 3, inplane, 3) + 2 * _conv_macs(s2, inplane, inplane, 3)
        + _conv_macs(s8, inplane, 2 * inplane, 3) + _conv_macs(s16, 2 * inplane, 4 * inplane, 3)
        + _conv_macs(s32, 4 * inplane, 4 * inplane, 3)
        + s4 * inplane * dim + s8 * 2 * inplane * dim + (s16 + s32) * 4 * inplane * dim
    )

    heads, points = adapter.deform_num_heads, adapter.deform_num_points
    hidden = int(dim * adapter.cffn_ratio)
    injector = _msda_macs(num_tokens, num_c, dim, heads, 3, points)
    extractor = (
        _msda_macs(num_c, num_tokens, dim, heads, 1, points)
        + num_c * (2 * dim * hidden + 9 * hidden)
    )
    num_interactions = len(adapter.interaction_indexes)
    adapter_macs = num_interactions * (injector + extractor) + adapter.extra_extractors * extractor
    adapter_macs += s8 * dim * dim * 4  # 2x2 transposed conv to stride 4

    pruning = 0
    if config.pruning.enabled:
        selective = len(config.pruning.selective_blocks)
        pruning = selective * num_tokens * (dim * config.pruning.selective_hidden_dim + 2 * config.pruning.selective_hidden_dim)
        if map_candidates:
            pruning += num_tokens * map_candidates * dim
            pruning += num_tokens * (dim * config.pruning.map_hidden_dim + 2 * config.pruning.map_hidden_dim)

    channels = head.feat_channels
    encoder_tokens = s32 + s16 + s8
    computed = encoder_tokens if encoder_queries is None else encoder_queries
    pixel_decoder = (
        encoder_tokens * dim * channels
        + head.num_encoder_layers * (
            _msda_macs(computed, encoder_tokens, channels, head.num_encoder_heads,
                       head.num_feature_levels, head.num_encoder_points)
            + computed * 2 * channels * head.encoder_ffn_dim
        )
        + s4 * dim * channels + _conv_macs(s4 if fpn_pixels is None else fpn_pixels, channels, channels, 3)
        + s4 * channels * channels
    )

    queries = head.num_queries + num_track_queries
    memories = [s32, s16, s8]
    decoder = 0
    for layer in range(head.num_decoder_layers):
        memory = memories[layer % head.num_feature_levels]
        cross = 2 * queries * channels * channels + 2 * memory * channels * channels + 2 * queries * memory * channels
        self_attn = 4 * queries * channels * channels + 2 * queries * queries * channels
        decoder += cross + self_attn + 2 * queries * channels * head.decoder_ffn_dim
    predictions = head.num_decoder_layers + 1
    per_prediction = queries * channels * (head.num_classes + 1) + 3 * queries * channels * channels + queries * channels * s4
    decoder += predictions * per_prediction

    return FrameFlops(*(2.0 * m for m in (
        patch_embed, vit_blocks, spatial_prior, adapter_macs, pruning, pixel_decoder, decoder,
    )))
