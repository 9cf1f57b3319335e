"""Hungarian matching of one frame's query predictions to its ground-truth objects."""

from __future__ import annotations

import logging

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from vppcli.training.points import point_sample, uniform_points
from vppcli.training.targets import FrameTargets

log = logging.getLogger(__name__)

# Stand-in for NaN/inf costs: larger than any real cost (class <= 1, BCE and Dice of finite
# logits stay far below), so a broken prediction is matched only when nothing else is left.
_INVALID_COST = 1e8


def pairwise_bce(logits: Tensor, labels: Tensor) -> Tensor:
    """Sigmoid BCE averaged over points, for every (prediction, target) pair.

    Args:
        logits: [Q, P] predicted logits at the shared points.
        labels: [G, P] targets in [0, 1] at the same points.
    Returns:
        [Q, G] costs.
    """
    # BCE(x, t) = t * softplus(-x) + (1 - t) * softplus(x): linear in t, so one matmul per term.
    positive = torch.nn.functional.softplus(-logits)
    negative = torch.nn.functional.softplus(logits)
    return (positive @ labels.T + negative @ (1.0 - labels).T) / logits.shape[1]


def pairwise_dice(logits: Tensor, labels: Tensor) -> Tensor:
    """1 - Dice with +1 smoothing in numerator and denominator, for every pair.

    Args:
        logits: [Q, P] predicted logits.
        labels: [G, P] targets in [0, 1].
    Returns:
        [Q, G] costs in [0, 1).
    """
    probs = logits.sigmoid()
    numerator = 2.0 * probs @ labels.T
    denominator = probs.sum(-1, keepdim=True) + labels.sum(-1).unsqueeze(0)
    return 1.0 - (numerator + 1.0) / (denominator + 1.0)


class HungarianMatcher:
    """One-to-one assignment minimising cost_class * class + cost_mask * BCE + cost_dice * Dice.

    The class cost is minus the softmax probability of the target class. The mask costs compare
    all predictions with all targets at one shared set of `num_points` uniform points (masks are
    never resized). Matching has no gradient and runs in float32 with autocast off.
    """

    def __init__(
        self, cost_class: float = 2.0, cost_mask: float = 5.0, cost_dice: float = 5.0, num_points: int = 12544
    ) -> None:
        self.cost_class = cost_class
        self.cost_mask = cost_mask
        self.cost_dice = cost_dice
        self.num_points = num_points

    @torch.no_grad()
    def cost_matrix(
        self,
        class_logits: Tensor,
        mask_logits: Tensor,
        targets: FrameTargets,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Finite [Q, G] float32 cost of assigning query q to target g.

        Args:
            class_logits: [Q, C+1] logits.
            mask_logits: [Q, h, w] stride-4 mask logits.
            targets: G objects with [G, Hp, Wp] masks at the padded input resolution.
            generator: random source of the shared points.
        """
        with torch.autocast(device_type=mask_logits.device.type, enabled=False):
            probs = class_logits.float().softmax(-1)
            cost_class = -probs[:, targets.labels.to(probs.device)]
            points = uniform_points(1, self.num_points, mask_logits.device, generator)
            pred = point_sample(mask_logits.float().unsqueeze(0), points)[0]  # [Q, P]
            gt_masks = targets.masks.to(mask_logits.device, torch.float32).unsqueeze(0)
            labels = point_sample(gt_masks, points)[0]  # [G, P]
            cost = (
                self.cost_class * cost_class
                + self.cost_mask * pairwise_bce(pred, labels)
                + self.cost_dice * pairwise_dice(pred, labels)
            )
        if not torch.isfinite(cost).all():
            log.warning("matching cost has NaN/inf entries (non-finite predictions); treating them as maximal")
            cost = torch.nan_to_num(cost, nan=_INVALID_COST, posinf=_INVALID_COST, neginf=-_INVALID_COST)
        return cost

    @torch.no_grad()
    def match(
        self,
        class_logits: Tensor,
        mask_logits: Tensor,
        targets: FrameTargets,
        query_subset: Tensor | None = None,
        target_subset: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Minimum-cost assignment of one frame (one batch element).

        Args:
            class_logits: [Q, C+1] logits of all queries.
            mask_logits: [Q, h, w] stride-4 mask logits.
            targets: the frame's G objects.
            query_subset: [Q'] int64 query indices allowed to match (e.g. the static queries);
                all queries without it.
            target_subset: [G'] int64 target indices to assign (e.g. those no track query
                claimed); all targets without it.
            generator: random source of the shared points; the global torch RNG without one.
        Returns:
            (pred_indices, target_indices): [min(Q', G')] int64 each, on the CPU, indices into
            the full query and target lists, in ascending query order.
        """
        queries = torch.arange(class_logits.shape[0]) if query_subset is None else query_subset.cpu()
        objects = torch.arange(targets.num_objects) if target_subset is None else target_subset.cpu()
        if queries.numel() == 0 or objects.numel() == 0:
            empty = torch.zeros(0, dtype=torch.int64)
            return empty, empty.clone()
        subset = FrameTargets(targets.labels[objects], targets.masks[objects], targets.instance_ids[objects])
        device_queries = queries.to(class_logits.device)
        cost = self.cost_matrix(class_logits[device_queries], mask_logits[device_queries], subset, generator)
        rows, cols = linear_sum_assignment(cost.cpu().numpy())  # rows come sorted
        pred = queries[torch.as_tensor(rows, dtype=torch.int64)]
        tgt = objects[torch.as_tensor(cols, dtype=torch.int64)]
        return pred.to(torch.int64), tgt.to(torch.int64)
