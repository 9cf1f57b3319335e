"""Mask2Former set criterion with deep supervision and RoVIS track queries.

One call scores one frame of a batch: every decoder prediction (the one before the first layer
included) is matched and scored on its own; the final one gives `loss_cls`, `loss_mask`,
`loss_dice`, the earlier ones `d0.*` .. `d{L-1}.*`. Losses come back weighted; a loss without a
weight raises instead of vanishing.

Track queries (frames after the first): the head appends K track queries after the Q static
ones. Each carries a fixed target (`TrackQueries.assignment`): a ground-truth index in this
frame, or -1 when its object is gone or it is a deliberate false positive. The static queries
are Hungarian-matched to the ground truth that no track query claims, and one combined loss is
computed over all Q + K queries. The reference instead computes separate `*_add` losses for
the track queries (their own CE mean over the K queries, their own mask normalisation) next to
the static losses (normalised by the unclaimed ground truth only). Here every query is scored
the same way: CE is one weighted mean over Q + K queries and the mask losses are summed over
all matched masks and divided by the frame's total ground-truth count. That keeps one loss per
name and one normalisation, at the price of a smaller per-query weight on track-query
classification than the reference's separate mean. The reference's `ref_` prefix and x0.5 on
the second frame are the caller's (`scale_losses`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from vppcli.training.distributed import all_reduce_mean
from vppcli.training.matcher import HungarianMatcher
from vppcli.training.points import point_sample, uncertain_point_coords
from vppcli.training.targets import FrameTargets

Assignment = tuple[Tensor, Tensor]
"""(pred_indices [M], target_indices [M]) int64 for one batch element."""

_LAYER_PREFIX = re.compile(r"^d\d+\.")


def weight_losses(losses: Mapping[str, Tensor], weights: Mapping[str, float]) -> dict[str, Tensor]:
    """Multiply each loss by its weight; `d{n}.` layer prefixes share the weight of the base name.

    Raises:
        KeyError: a loss has no weight (it would otherwise be silently left out of training).
    """
    weighted = {}
    for key, value in losses.items():
        base = _LAYER_PREFIX.sub("", key)
        if base not in weights:
            raise KeyError(f"loss {key!r} has no weight; weights are given for {sorted(weights)}")
        weighted[key] = value * weights[base]
    return weighted


def scale_losses(losses: Mapping[str, Tensor], prefix: str = "", factor: float = 1.0) -> dict[str, Tensor]:
    """Prefix and scale a loss dict, e.g. `scale_losses(ref, "ref_", 0.5)` for the second frame."""
    return {prefix + key: value * factor for key, value in losses.items()}


def dice_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """[M, P] logits and labels -> [M] 1 - Dice, with +1 smoothing on top and bottom."""
    probs = logits.sigmoid()
    numerator = 2.0 * (probs * labels).sum(-1) + 1.0
    return 1.0 - numerator / (probs.sum(-1) + labels.sum(-1) + 1.0)


class SetCriterion:
    """Classification + point-sampled mask BCE and Dice for matched queries (Mask2Former)."""

    def __init__(
        self,
        num_classes: int,
        matcher: HungarianMatcher,
        class_weight: float = 2.0,
        mask_weight: float = 5.0,
        dice_weight: float = 5.0,
        no_object_weight: float = 0.1,
        num_points: int = 12544,
        oversample_ratio: float = 3.0,
        importance_ratio: float = 0.75,
    ) -> None:
        self.num_classes = num_classes
        self.matcher = matcher
        self.weights = {"loss_cls": class_weight, "loss_mask": mask_weight, "loss_dice": dice_weight}
        self.no_object_weight = no_object_weight
        self.num_points = num_points
        self.oversample_ratio = oversample_ratio
        self.importance_ratio = importance_ratio

    def __call__(
        self,
        predictions: Sequence[tuple[Tensor, Tensor]],
        targets: Sequence[FrameTargets],
        fixed_assignment: Sequence[Assignment] | None = None,
        static_queries: int | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        """Weighted losses of one frame.

        Args:
            predictions: (class_logits [B, N, C+1], mask_logits [B, N, h, w]) of every decoder
                prediction, first (before decoder layer 1) to last (`HeadOutput.intermediate`).
            targets: one `FrameTargets` per batch element, masks at the padded input size.
            fixed_assignment: per batch element, the track queries' (query index in
                [static_queries, N), target index or -1); None without track queries.
            static_queries: Q, the number of Hungarian-matched queries; required with
                `fixed_assignment`, all N queries without it.
            generator: random source of matching and loss points; global torch RNG without.
        Returns:
            {"loss_cls", "loss_mask", "loss_dice", "d0.loss_cls", ...}: weighted scalars.
        """
        if not predictions:
            raise ValueError("no predictions to score")
        batch, num_queries = predictions[-1][0].shape[:2]
        if len(targets) != batch:
            raise ValueError(f"{len(targets)} target frames for a batch of {batch}")
        static_queries = self._check_assignment(fixed_assignment, static_queries, num_queries, targets)
        num_masks = self.num_masks(targets, predictions[-1][0].device)
        losses = {}
        last = len(predictions) - 1
        for layer, (class_logits, mask_logits) in enumerate(predictions):
            assignment = self.assign(
                class_logits, mask_logits, targets, fixed_assignment, static_queries, generator
            )
            prefix = "" if layer == last else f"d{layer}."
            losses[prefix + "loss_cls"] = self.loss_labels(class_logits, targets, assignment)
            mask, dice = self.loss_masks(mask_logits, targets, assignment, num_masks, generator)
            losses[prefix + "loss_mask"] = mask
            losses[prefix + "loss_dice"] = dice
        return weight_losses(losses, self.weights)

    @staticmethod
    def num_masks(targets: Sequence[FrameTargets], device: torch.device) -> Tensor:
        """Mask-loss normaliser: the batch's ground-truth count, averaged over ranks, at least 1.

        Averaging (not summing) over ranks keeps the per-rank scale while making every rank
        divide by the same number, so DDP's gradient mean weights each mask equally.
        """
        local = torch.tensor(float(sum(frame.num_objects for frame in targets)), device=device)
        return all_reduce_mean(local).clamp(min=1.0)

    def assign(
        self,
        class_logits: Tensor,
        mask_logits: Tensor,
        targets: Sequence[FrameTargets],
        fixed_assignment: Sequence[Assignment] | None = None,
        static_queries: int | None = None,
        generator: torch.Generator | None = None,
    ) -> list[Assignment]:
        """Query-target pairs of one prediction: Hungarian for static queries, fixed for tracks.

        Args:
            class_logits: [B, N, C+1]; mask_logits: [B, N, h, w]; the rest as in `__call__`.
        Returns:
            per batch element (pred_indices [M], target_indices [M]) int64 on the CPU, only
            pairs with a real target (track queries with -1 are left out: no object).
        """
        static = torch.arange(class_logits.shape[1] if static_queries is None else static_queries)
        pairs = []
        for index, frame in enumerate(targets):
            track_pred, track_tgt = self._track_pairs(fixed_assignment, index)
            free = torch.ones(frame.num_objects, dtype=torch.bool)
            free[track_tgt] = False
            pred, tgt = self.matcher.match(
                class_logits[index], mask_logits[index], frame, static, free.nonzero()[:, 0], generator
            )
            pairs.append((torch.cat((pred, track_pred)), torch.cat((tgt, track_tgt))))
        return pairs

    def loss_labels(
        self, class_logits: Tensor, targets: Sequence[FrameTargets], assignment: list[Assignment]
    ) -> Tensor:
        """Cross-entropy over C+1 classes; unassigned queries target "no object" (index C).

        `F.cross_entropy` with class weights divides by the summed weights of the targets, so
        many cheap no-object terms do not drown the few object terms.
        """
        batch, num_queries = class_logits.shape[:2]
        device = class_logits.device
        target_classes = torch.full((batch, num_queries), self.num_classes, dtype=torch.int64, device=device)
        for index, (pred, tgt) in enumerate(assignment):
            labels = targets[index].labels
            target_classes[index, pred.to(device)] = labels[tgt.to(labels.device)].to(device)
        weight = torch.ones(self.num_classes + 1, device=device)
        weight[-1] = self.no_object_weight
        with torch.autocast(device_type=device.type, enabled=False):
            return F.cross_entropy(class_logits.float().transpose(1, 2), target_classes, weight=weight)

    def loss_masks(
        self,
        mask_logits: Tensor,
        targets: Sequence[FrameTargets],
        assignment: list[Assignment],
        num_masks: Tensor,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor]:
        """BCE (mean over points) and Dice of the assigned masks, each summed and / num_masks.

        Points are importance-sampled per predicted mask; prediction (stride 4) and ground
        truth (padded input size) are read at the same normalised points, so nothing is resized.
        Padding counts as background.
        """
        device = mask_logits.device
        logits, labels = [], []
        with torch.autocast(device_type=device.type, enabled=False):
            for index, (pred, tgt) in enumerate(assignment):
                if pred.numel() == 0:
                    continue
                predicted = mask_logits[index, pred.to(device)].float().unsqueeze(1)  # [M, 1, h, w]
                coords = uncertain_point_coords(
                    predicted, self.num_points, self.oversample_ratio, self.importance_ratio, generator
                )
                truth = targets[index].masks[tgt.to(targets[index].masks.device)].to(device, torch.float32)
                logits.append(point_sample(predicted, coords)[:, 0])
                labels.append(point_sample(truth.unsqueeze(1), coords)[:, 0])
            if not logits:
                # Zero that stays connected to the graph: every parameter still gets a gradient,
                # which DDP requires even for frames without objects.
                zero = mask_logits.float().sum() * 0.0
                return zero, zero.clone()
            point_logits, point_labels = torch.cat(logits), torch.cat(labels)
            bce = F.binary_cross_entropy_with_logits(point_logits, point_labels, reduction="none").mean(1)
            return bce.sum() / num_masks, dice_loss(point_logits, point_labels).sum() / num_masks

    @staticmethod
    def _track_pairs(fixed_assignment: Sequence[Assignment] | None, index: int) -> Assignment:
        """The track queries of batch element `index` that have a real target."""
        if fixed_assignment is None:
            empty = torch.zeros(0, dtype=torch.int64)
            return empty, empty.clone()
        pred, tgt = (part.cpu().to(torch.int64) for part in fixed_assignment[index])
        valid = tgt >= 0
        return pred[valid], tgt[valid]

    @staticmethod
    def _check_assignment(
        fixed_assignment: Sequence[Assignment] | None,
        static_queries: int | None,
        num_queries: int,
        targets: Sequence[FrameTargets],
    ) -> int:
        """Validate the track-query assignment; returns the number of static queries."""
        if fixed_assignment is None:
            if static_queries not in (None, num_queries):
                raise ValueError(f"{num_queries - static_queries} track queries need a fixed_assignment")
            return num_queries
        if static_queries is None or not 0 <= static_queries <= num_queries:
            raise ValueError(f"static_queries must be given, in 0..{num_queries}, with a fixed_assignment")
        if len(fixed_assignment) != len(targets):
            raise ValueError(f"{len(fixed_assignment)} fixed assignments for a batch of {len(targets)}")
        for (pred, tgt), frame in zip(fixed_assignment, targets):
            valid = tgt[tgt >= 0]
            if (
                pred.shape != tgt.shape
                or ((pred < static_queries) | (pred >= num_queries)).any()
                or pred.unique().numel() != pred.numel()
                or (tgt < -1).any()
                or (tgt >= frame.num_objects).any()
                or valid.unique().numel() != valid.numel()
            ):
                raise ValueError(
                    f"fixed assignment must map distinct track queries ({static_queries}..{num_queries - 1}) "
                    f"to distinct targets (0..{frame.num_objects - 1}) or -1"
                )
        return static_queries
