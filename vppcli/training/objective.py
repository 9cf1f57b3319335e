"""The training objective of one clip: its frames through the model in temporal order, as at
inference, and the weighted losses.

Frames t = 0..T-1 run through the backbone in order, each with the previous frame's temporal
cache, so the Map-SM learns from a real prior. The head is trained on the last two frames
(the reference's key and reference frames): the first of them with the static queries only,
the second also with track queries built from the first's matched predictions (RoVIS), its
losses prefixed `track.` and halved. Earlier frames (the VPP stage's third frame) only warm the
cache and contribute their ratio loss. This keeps the reference's frame roles but in forward
time, where the reference's order is arbitrary (reference-architecture.md 4.2).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from vppcli.model.pruning import PruningPlan, distance_prior
from vppcli.model.rovis import VppModel
from vppcli.training.config import TrainConfig
from vppcli.training.criterion import SetCriterion, scale_losses
from vppcli.training.matcher import HungarianMatcher
from vppcli.training.sparsity import sparsity_loss
from vppcli.training.targets import ClipSample
from vppcli.training.track_queries import TrackQueries, build_track_queries

# The Map-SM's ratio target on its soft probabilities is a constant in the reference (2.11).
MAP_PROBABILITY_TARGET = 0.5


@dataclass(frozen=True)
class ClipStats:
    """keep_ratio: realised mean keep fraction over the ViT blocks and frames (1 when dense).
    track_queries: track queries fed to the second head frame."""

    keep_ratio: float
    track_queries: int


class ClipObjective(nn.Module):
    """Wraps the model so that one `forward` is one clip (what DDP needs: one forward per step)."""

    def __init__(self, model: VppModel, config: TrainConfig) -> None:
        super().__init__()
        self.model = model
        self.config = config
        matcher = HungarianMatcher(config.class_weight, config.mask_weight, config.dice_weight, config.num_points)
        self.criterion = SetCriterion(
            model.config.head.num_classes, matcher, config.class_weight, config.mask_weight, config.dice_weight,
            config.no_object_weight, config.num_points,
        )

    def forward(self, clip: ClipSample, seed: int) -> tuple[dict[str, Tensor], ClipStats]:
        """Weighted losses (sum them for the total) and statistics of one clip; every random
        draw (pruning noise, loss points, track-query noise) comes from `seed`."""
        pruning = self.model.config.pruning
        device = clip.images.device
        noise = torch.Generator(device=device).manual_seed(seed)
        sampling = torch.Generator().manual_seed(seed + 1)
        height, width = (size // 16 for size in clip.images.shape[-2:])
        prior = distance_prior(height, width, device) if pruning.enabled else None
        plan = PruningPlan(generator=noise, tau=pruning.tau, soft=True) if pruning.enabled else PruningPlan()
        num_static = self.model.config.head.num_queries
        first_head_frame = max(0, clip.num_frames - 2)

        losses: dict[str, Tensor] = {}
        cache, tracks = None, None
        kept_fractions: list[float] = []
        num_tracks = 0
        for t in range(clip.num_frames):
            images, targets = clip.images[t : t + 1], clip.targets[t]
            if t < first_head_frame:
                backbone = self.model.backbone(images, cache, plan, prior)
            else:
                queries = None if tracks is None or tracks.num_queries == 0 else tracks.features[None]
                output = self.model(images, queries, cache, plan, prior, return_intermediate=True)
                backbone = output.backbone
                assert output.head.intermediate is not None
                fixed = None if queries is None else [tracks.assignment(num_static)]
                frame_losses = self.criterion(output.head.intermediate, [targets], fixed,
                                              num_static if fixed else None, sampling)
                if t == first_head_frame:
                    losses.update(frame_losses)
                    if t + 1 < clip.num_frames:
                        tracks = self._track_queries(output.head, clip, t, sampling)
                        num_tracks = tracks.num_queries
                else:
                    losses.update(scale_losses(frame_losses, "track.", self.config.track_query_loss_weight))
            cache = backbone.cache
            kept_fractions.append(sum(backbone.tokens_per_block) / (len(backbone.tokens_per_block) * height * width))
            if backbone.sparsity is not None:
                terms = backbone.sparsity
                losses[f"sparsity.f{t}"] = sparsity_loss(
                    terms.selective_keep, pruning.selective_keep_ratios, terms.map_keep_probability,
                    MAP_PROBABILITY_TARGET, self.config.sparsity_weight, self.config.map_sparsity_weight,
                )
        return losses, ClipStats(sum(kept_fractions) / len(kept_fractions), num_tracks)

    def _track_queries(self, head, clip: ClipSample, t: int, sampling: torch.Generator) -> TrackQueries:
        """Frame t's matched final predictions -> the track queries of frame t+1."""
        with torch.no_grad():
            matched = self.criterion.assign(head.class_logits, head.mask_logits, [clip.targets[t]],
                                            generator=sampling)[0]
        return build_track_queries(head.query_features[0], head.mask_logits[0], matched, clip.targets[t],
                                   clip.targets[t + 1], generator=sampling)
