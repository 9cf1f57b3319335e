"""RoVIS track queries for training: from frame t's matched predictions to frame t+1's inputs.

At inference the tracker feeds each live track's final query features into the next frame. In
training, frame t's final prediction is Hungarian-matched to frame t's ground truth and the
matched queries become frame t+1's track queries, with noise so that the head learns to cope
with the tracker's mistakes:

- false negatives: each matched pair is kept with probability `keep_prob` (0.8), i.e. dropped
  with probability 0.2, so static queries must still find objects a track lost. The reference
  config calls the 0.8 `track_query_false_negative_prob`, but its code keeps a pair when a
  uniform draw is *below* it, so 0.8 is the keep probability; this module implements that
  behaviour under an honest name.
- false positives: for each kept pair, with probability `false_positive_prob` (0.2) one
  unmatched query (a query not matched to any object in frame t) is added with target -1, so
  the head learns to send stale tracks to "no object". If the pair's object is still present
  in frame t+1, the query is drawn with probability proportional to the distance between the
  top-left corners of its predicted box and the pair's predicted box (boxes of the binarised
  frame-t masks, as in the reference); otherwise uniformly. A query is never drawn twice.

Each track query's target in frame t+1 is the ground truth with the same instance id, or -1
when the object is absent there (and for every false positive).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from vppcli.training.targets import FrameTargets


@dataclass(frozen=True)
class TrackQueries:
    """Track queries of one batch element, in the order the head appends them.

    features:       [K, C] detached final query features of frame t (before `post_norm`).
    target_indices: [K] int64 index into frame t+1's `FrameTargets`, or -1 (no object).
    source_queries: [K] int64 index of the frame-t query each one came from.
    """

    features: Tensor
    target_indices: Tensor
    source_queries: Tensor

    @property
    def num_queries(self) -> int:
        return int(self.target_indices.shape[0])

    def assignment(self, static_queries: int) -> tuple[Tensor, Tensor]:
        """The criterion's fixed assignment: track query k sits at index Q + k of the head's output.

        Returns:
            (pred_indices [K], target_indices [K]) int64 on the CPU.
        """
        pred = static_queries + torch.arange(self.num_queries, dtype=torch.int64)
        return pred, self.target_indices.cpu()


def mask_top_left(mask_logits: Tensor) -> Tensor:
    """[N, h, w] logits -> [N, 2] float (x_min, y_min) of the box of `logit > 0`; (0, 0) if empty."""
    binary = mask_logits > 0
    columns = binary.any(dim=1).to(torch.uint8)  # [N, w]
    rows = binary.any(dim=2).to(torch.uint8)  # [N, h]
    # argmax returns the first maximum: the first occupied column/row, or 0 for an empty mask.
    return torch.stack((columns.argmax(dim=1), rows.argmax(dim=1)), dim=1).float()


@torch.no_grad()
def build_track_queries(
    query_features: Tensor,
    mask_logits: Tensor,
    matched: tuple[Tensor, Tensor],
    targets: FrameTargets,
    next_targets: FrameTargets,
    keep_prob: float = 0.8,
    false_positive_prob: float = 0.2,
    generator: torch.Generator | None = None,
) -> TrackQueries:
    """Track queries for frame t+1 from frame t's final prediction (one batch element).

    Args:
        query_features: [N, C] final decoder queries of frame t (`HeadOutput.query_features[b]`).
        mask_logits: [N, h, w] final mask logits of frame t (for the false-positive boxes).
        matched: (pred_indices, target_indices) Hungarian match of that prediction to `targets`.
        targets: frame t's ground truth.
        next_targets: frame t+1's ground truth.
        keep_prob: probability of keeping a matched pair (1 - false-negative rate).
        false_positive_prob: per kept pair, probability of adding one unmatched query.
        generator: a CPU generator; the global CPU RNG without one.
    Returns:
        `TrackQueries`: the kept pairs first (in match order), then the false positives.
    """
    if not 0.0 <= keep_prob <= 1.0 or not 0.0 <= false_positive_prob <= 1.0:
        raise ValueError(f"probabilities must be in [0, 1], got {keep_prob} and {false_positive_prob}")
    pred, tgt = (part.cpu().to(torch.int64) for part in matched)
    # Strict "<": probability 0 never keeps and 1 always keeps (rand is in [0, 1)).
    keep = torch.rand(pred.numel(), generator=generator) < keep_prob
    pred, tgt = pred[keep], tgt[keep]

    ids = targets.instance_ids.cpu()[tgt]
    same = ids.unsqueeze(1) == next_targets.instance_ids.cpu().unsqueeze(0)  # [kept, G_next]
    present = same.any(dim=1)
    next_index = torch.full_like(ids, -1)
    rows, columns = same.nonzero(as_tuple=True)  # instance ids are unique within a frame
    next_index[rows] = columns

    unmatched = torch.ones(query_features.shape[0], dtype=torch.bool)
    unmatched[matched[0].cpu()] = False  # dropped pairs are true detections, not false positives
    false_positives = _sample_false_positives(
        mask_top_left(mask_logits.detach().cpu()), pred, present, unmatched, false_positive_prob, generator
    )

    source = torch.cat((pred, false_positives))
    target_indices = torch.cat((next_index, torch.full_like(false_positives, -1)))
    features = query_features.detach()[source.to(query_features.device)]
    return TrackQueries(features=features, target_indices=target_indices, source_queries=source)


def _sample_false_positives(
    corners: Tensor,
    kept: Tensor,
    present: Tensor,
    candidates: Tensor,
    probability: float,
    generator: torch.Generator | None,
) -> Tensor:
    """Draw at most one unmatched query per kept pair, without replacement.

    Args:
        corners: [N, 2] top-left corners of every query's predicted box.
        kept: [K] query indices of the kept pairs.
        present: [K] bool, the pair's object exists in the next frame.
        candidates: [N] bool, queries that may still be drawn (updated in place).
        probability: chance of a false positive per kept pair.
    Returns:
        [F] int64 query indices.
    """
    chosen = []
    wanted = torch.rand(kept.numel(), generator=generator) < probability
    for query, is_present in zip(kept[wanted].tolist(), present[wanted].tolist()):
        pool = candidates.nonzero()[:, 0]
        if pool.numel() == 0:
            break
        weights = torch.ones(pool.numel())
        if is_present:
            weights = (corners[pool] - corners[query]).norm(dim=1)
            if weights.sum() <= 0:  # every candidate shares the corner: no preference
                weights = torch.ones(pool.numel())
        pick = int(pool[torch.multinomial(weights, 1, generator=generator)])
        candidates[pick] = False
        chosen.append(pick)
    return torch.tensor(chosen, dtype=torch.int64)
