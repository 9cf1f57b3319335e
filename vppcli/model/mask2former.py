"""Mask2Former head with RoVIS track queries (the authors' `AdditionalQueriesFormerHead`).

The head has two separately callable stages: the pixel decoder (`head.pixel_decoder`) turns
backbone maps into mask features and multi-scale memories; `decode_queries` runs the
masked-attention transformer decoder on the static queries plus the previous frame's track
queries and predicts classes and masks.

Official checkpoint names (mmdet 3.0.0rc5, prefix `detector.panoptic_head.`) map onto this
module's state_dict by these rules, applied in order; every other name is identical:

==========================================  ====================================
official                                    vppcli
==========================================  ====================================
`transformer_decoder...attentions.0.attn.`  `transformer_decoder...cross_attn.`
`transformer_decoder...attentions.1.attn.`  `transformer_decoder...self_attn.`
`pixel_decoder.encoder...attentions.0.`     `pixel_decoder.encoder...self_attn.`
`ffns.0.layers.0.0.`                        `ffn.fc1.`
`ffns.0.layers.1.`                          `ffn.fc2.`
`norms.{k}.`                                `norm{k+1}.`
==========================================  ====================================
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vppcli.config import HeadConfig
from vppcli.model.pixel_decoder import FFN, MSDeformAttnPixelDecoder
from vppcli.model.position_encoding import sine_position_encoding


@dataclass
class HeadOutput:
    """Predictions for Q static + K track queries (track queries last, in the order given).

    class_logits:   [B, Q+K, num_classes + 1], last index = "no object".
    mask_logits:    [B, Q+K, H/4, W/4] at the mask-feature (stride 4) resolution.
    query_features: [B, Q+K, C] final decoder queries before `post_norm`; the tracker feeds
                    them back as next frame's track queries.
    intermediate:   (class_logits, mask_logits) of all `num_decoder_layers + 1` predictions
                    (initial queries first, last = the two fields above), or None.
    """

    class_logits: Tensor
    mask_logits: Tensor
    query_features: Tensor
    intermediate: list[tuple[Tensor, Tensor]] | None = None


def build_attention_mask(mask_logits: Tensor, size: tuple[int, int], num_heads: int) -> Tensor:
    """Masked-attention mask from a mask prediction.

    Args:
        mask_logits: [B, N, H, W] mask logits of the previous prediction.
        size: (h, w) of the memory level the next layer attends to.
        num_heads: attention heads; the mask is repeated per head.
    Returns:
        [B * num_heads, N, h * w] bool, True = key NOT allowed (nn.MultiheadAttention's
        convention); batch-major, head-minor. A query whose mask is empty at this size may
        attend everywhere, otherwise its softmax would have no support.
    """
    resized = F.interpolate(mask_logits.detach(), size=size, mode="bilinear", align_corners=False)
    blocked = resized.flatten(2).sigmoid() < 0.5
    blocked = blocked & ~blocked.all(dim=-1, keepdim=True)
    return blocked.repeat_interleave(num_heads, dim=0)


class MaskedAttentionDecoderLayer(nn.Module):
    """Post-norm decoder layer: masked cross-attention, self-attention, FFN (each + residual + LN)."""

    def __init__(self, dim: int, num_heads: int, ffn_dim: int) -> None:
        super().__init__()
        self.cross_attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.norm1 = nn.LayerNorm(dim)
        self.self_attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = FFN(dim, ffn_dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(
        self, query: Tensor, query_pos: Tensor, memory: Tensor, memory_pos: Tensor, attn_mask: Tensor
    ) -> Tensor:
        """
        Args:
            query: [B, N, C] decoder queries.
            query_pos: [B, N, C] query positional embedding (zeros for track queries).
            memory: [B, S, C] flattened memory level (+ level embedding).
            memory_pos: [B, S, C] sine encoding of that level.
            attn_mask: [B * heads, N, S] bool, True = not allowed.
        Returns:
            [B, N, C] updated queries.
        """
        attended = self.cross_attn(
            query + query_pos, memory + memory_pos, memory, attn_mask=attn_mask, need_weights=False
        )[0]
        query = self.norm1(query + attended)
        query_with_pos = query + query_pos
        attended = self.self_attn(query_with_pos, query_with_pos, query, need_weights=False)[0]
        query = self.norm2(query + attended)
        return self.norm3(query + self.ffn(query))


class MaskedAttentionDecoder(nn.Module):
    """Parameter container of the transformer decoder. The layer loop lives in
    `Mask2FormerHead.decode_queries` because every layer needs the prediction of the previous
    one (through `post_norm` and the head's class/mask embeddings)."""

    def __init__(self, cfg: HeadConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            MaskedAttentionDecoderLayer(cfg.feat_channels, cfg.num_decoder_heads, cfg.decoder_ffn_dim)
            for _ in range(cfg.num_decoder_layers)
        )
        self.post_norm = nn.LayerNorm(cfg.feat_channels)


class Mask2FormerHead(nn.Module):
    """Deformable pixel decoder + masked-attention decoder with optional track queries."""

    def __init__(self, in_channels: int, cfg: HeadConfig) -> None:
        super().__init__()
        channels = cfg.feat_channels
        self.num_heads = cfg.num_decoder_heads
        self.num_levels = cfg.num_feature_levels
        self.pixel_decoder = MSDeformAttnPixelDecoder(in_channels, cfg)
        self.transformer_decoder = MaskedAttentionDecoder(cfg)
        self.query_embed = nn.Embedding(cfg.num_queries, channels)
        self.query_feat = nn.Embedding(cfg.num_queries, channels)
        self.level_embed = nn.Embedding(self.num_levels, channels)
        self.cls_embed = nn.Linear(channels, cfg.num_classes + 1)
        self.mask_embed = nn.Sequential(
            nn.Linear(channels, channels),
            nn.ReLU(),
            nn.Linear(channels, channels),
            nn.ReLU(),
            nn.Linear(channels, channels),
        )
        self._init_decoder()

    def _init_decoder(self) -> None:
        # As mmdet: xavier for the decoder's matrices; embeddings and the prediction MLPs keep
        # PyTorch's defaults (N(0, 1) embeddings, Kaiming-uniform linears).
        for name, param in self.transformer_decoder.named_parameters():
            if param.dim() > 1:
                nn.init.xavier_uniform_(param)
            elif name.endswith("bias"):
                nn.init.zeros_(param)

    def forward(
        self,
        features: Sequence[Tensor],
        track_queries: Tensor | None = None,
        return_intermediate: bool = False,
    ) -> HeadOutput:
        """
        Args:
            features: backbone maps at strides 4, 8, 16, 32, each [B, D, H/s, W/s].
            track_queries: [B, K, C] (or [K, C], shared by the batch) previous-frame query
                features; None or K = 0 for no tracks.
            return_intermediate: also return every layer's prediction (for training).
        Returns:
            `HeadOutput` for the Q + K queries.
        """
        mask_features, memories = self.pixel_decoder(features)
        return self.decode_queries(mask_features, memories, track_queries, return_intermediate)

    def decode_queries(
        self,
        mask_features: Tensor,
        memories: Sequence[Tensor],
        track_queries: Tensor | None = None,
        return_intermediate: bool = False,
    ) -> HeadOutput:
        """Transformer-decoder stage.

        Args:
            mask_features: [B, C, H/4, W/4] from the pixel decoder.
            memories: [B, C, h_l, w_l] maps, coarsest first (strides 32, 16, 8).
            track_queries: [B, K, C] or [K, C] track queries, or None.
            return_intermediate: keep all `num_decoder_layers + 1` predictions.
        Returns:
            `HeadOutput` for the Q + K queries.
        """
        if len(memories) != self.num_levels:
            raise ValueError(f"expected {self.num_levels} memory levels, got {len(memories)}")
        batch = mask_features.shape[0]
        level_memories, level_positions, level_sizes = [], [], []
        for level, memory in enumerate(memories):
            _, channels, height, width = memory.shape
            level_memories.append(memory.flatten(2).transpose(1, 2) + self.level_embed.weight[level])
            pos = sine_position_encoding(batch, height, width, channels // 2, memory.device, memory.dtype)
            level_positions.append(pos.flatten(2).transpose(1, 2))
            level_sizes.append((height, width))

        query, query_pos = self._initial_queries(batch, track_queries)
        predictions = []
        class_logits, mask_logits = self._predict(query, mask_features)
        predictions.append((class_logits, mask_logits))
        for index, layer in enumerate(self.transformer_decoder.layers):
            level = index % self.num_levels
            attn_mask = build_attention_mask(mask_logits, level_sizes[level], self.num_heads)
            query = layer(query, query_pos, level_memories[level], level_positions[level], attn_mask)
            class_logits, mask_logits = self._predict(query, mask_features)
            predictions.append((class_logits, mask_logits))
        return HeadOutput(
            class_logits=class_logits,
            mask_logits=mask_logits,
            query_features=query,
            intermediate=predictions if return_intermediate else None,
        )

    def _initial_queries(self, batch: int, track_queries: Tensor | None) -> tuple[Tensor, Tensor]:
        """Static queries followed by track queries: features and positions, each [B, Q+K, C].
        Track queries carry no learned position (zeros), as in RoVIS."""
        query = self.query_feat.weight.unsqueeze(0).expand(batch, -1, -1)
        query_pos = self.query_embed.weight.unsqueeze(0).expand(batch, -1, -1)
        if track_queries is None:
            return query, query_pos
        if track_queries.dim() == 2:
            track_queries = track_queries.unsqueeze(0).expand(batch, -1, -1)
        if track_queries.shape[0] != batch or track_queries.shape[2] != query.shape[2]:
            raise ValueError(f"track queries of shape {tuple(track_queries.shape)} for batch {batch}")
        track_queries = track_queries.to(query.dtype)
        query = torch.cat((query, track_queries), dim=1)
        query_pos = torch.cat((query_pos, torch.zeros_like(track_queries)), dim=1)
        return query, query_pos

    def _predict(self, query: Tensor, mask_features: Tensor) -> tuple[Tensor, Tensor]:
        """[B, N, C] queries -> class logits [B, N, num_classes + 1], mask logits [B, N, H/4, W/4]."""
        normed = self.transformer_decoder.post_norm(query)
        mask_logits = torch.einsum("bnc,bchw->bnhw", self.mask_embed(normed), mask_features)
        return self.cls_embed(normed), mask_logits
