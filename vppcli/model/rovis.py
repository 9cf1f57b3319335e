"""RoVIS with a VPP backbone: the network of one frame, stateless.

`VppModel.forward` maps one pre-processed frame plus what the previous frame left behind (the
backbone's temporal cache and the tracker's track queries) to head predictions and the new
cache. The per-video bookkeeping lives in `vppcli.inference.VideoState`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from vppcli.config import VppConfig
from vppcli.model.backbone import BackboneOutput, SelectiveViTAdapter, TemporalCache
from vppcli.model.mask2former import HeadOutput, Mask2FormerHead
from vppcli.model.pruning import PruningPlan
from vppcli.model.temporal_reuse import PixelDecoderCache, ReuseOutcome, TemporalReuse
from vppcli.profiling import SectionTimer, timed


@dataclass
class FrameOutput:
    """reuse_cache / reuse: the pixel-decoder states for the next frame and what was recomputed,
    with temporal reuse on (else None)."""

    head: HeadOutput
    backbone: BackboneOutput
    reuse_cache: PixelDecoderCache | None = None
    reuse: ReuseOutcome | None = None


class VppModel(nn.Module):
    def __init__(self, config: VppConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = SelectiveViTAdapter(config)
        self.head = Mask2FormerHead(config.vit.embed_dim, config.head)

    def forward(
        self,
        images: Tensor,
        track_queries: Tensor | None = None,
        cache: TemporalCache | None = None,
        plan: PruningPlan = PruningPlan(),
        prior: Tensor | None = None,
        timer: SectionTimer | None = None,
        return_intermediate: bool = False,
        reuse: TemporalReuse | None = None,
        reuse_cache: PixelDecoderCache | None = None,
    ) -> FrameOutput:
        """
        Args:
            images: [1, 3, Hp, Wp] normalised, padded frame.
            track_queries: [1, K, C] query features of the live tracks (tracker order), or None.
            cache: previous frame's temporal cache (None on a video's first frame).
            plan: pruning budgets/noise for this frame.
            prior: [N, N] Map-SM distance prior for this grid (computed if None).
            timer: optional per-component timer.
            return_intermediate: keep every decoder layer's prediction (training).
            reuse: sparse temporal reuse in the pixel decoder (None = off, the dense decoder);
                it reads the last ViT block's keep mask, so `plan.record_masks` should be set.
            reuse_cache: the previous frame's pixel-decoder states (None: refresh densely).
        """
        backbone = self.backbone(images, cache, plan, prior, timer)
        new_reuse_cache = outcome = None
        with timed(timer, "pixel_decoder"):
            if reuse is None:
                mask_features, memories = self.head.pixel_decoder(backbone.features)
            else:
                keep_mask = backbone.block_masks[-1] if backbone.block_masks else None
                grid = (images.shape[-2] // self.config.vit.patch_size, images.shape[-1] // self.config.vit.patch_size)
                mask_features, memories, new_reuse_cache, outcome = self.head.pixel_decoder.forward_reuse(
                    backbone.features, reuse, reuse_cache, keep_mask, grid)
        with timed(timer, "transformer_decoder"):
            head = self.head.decode_queries(mask_features, memories, track_queries, return_intermediate)
        return FrameOutput(head, backbone, new_reuse_cache, outcome)


def build_model(config: VppConfig, seed: int | None = None) -> VppModel:
    """A model with random weights, in eval mode. With `seed`, the weights are that seed's, drawn
    from a forked RNG so the caller's global random state is left as it was."""
    if seed is None:
        return VppModel(config).eval()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return VppModel(config).eval()
