"""Training losses: point sampling, Hungarian matching, the set criterion with deep supervision
and track queries, track-query construction and the VPP sparsity loss. CPU, tiny tensors:
predictions on a 16x16 stride-4 grid, ground truth at the 64x64 padded input size."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from vppcli.training.criterion import SetCriterion, scale_losses, weight_losses
from vppcli.training.matcher import HungarianMatcher
from vppcli.training.points import point_sample, uncertain_point_coords
from vppcli.training.sparsity import sparsity_loss
from vppcli.training.targets import FrameTargets
from vppcli.training.track_queries import TrackQueries, build_track_queries, mask_top_left

NUM_CLASSES = 5
GRID = 16  # prediction cells per side (stride 4)
PADDED = 64  # ground-truth pixels per side
LOGIT = 10.0  # "confident": sigmoid(10) = 0.99995


def block(y0: int, x0: int, y1: int, x1: int) -> Tensor:
    """[PADDED, PADDED] bool mask covering prediction cells [y0, y1) x [x0, x1)."""
    mask = torch.zeros(PADDED, PADDED, dtype=torch.bool)
    mask[4 * y0 : 4 * y1, 4 * x0 : 4 * x1] = True
    return mask


def frame(masks: list[Tensor], labels: list[int], ids: list[int] | None = None) -> FrameTargets:
    if not masks:
        return FrameTargets.empty(PADDED, PADDED)
    ids = list(range(len(masks))) if ids is None else ids
    return FrameTargets(torch.tensor(labels), torch.stack(masks), torch.tensor(ids))


def mask_logits_for(masks: Tensor) -> Tensor:
    """[G, PADDED, PADDED] bool -> [G, GRID, GRID] logits: +LOGIT inside, -LOGIT outside."""
    cells = masks.float().view(-1, GRID, 4, GRID, 4).mean(dim=(2, 4)) > 0.5
    return torch.where(cells, LOGIT, -LOGIT)


def class_logits_for(labels: list[int | None]) -> Tensor:
    """[Q, C+1] confident logits; None = "no object"."""
    logits = torch.full((len(labels), NUM_CLASSES + 1), -LOGIT)
    for query, label in enumerate(labels):
        logits[query, NUM_CLASSES if label is None else label] = LOGIT
    return logits


def prediction(labels: list[int | None], masks: list[Tensor | None]) -> tuple[Tensor, Tensor]:
    """One-element batch: class logits [1, Q, C+1], mask logits [1, Q, GRID, GRID]."""
    empty = torch.zeros(PADDED, PADDED, dtype=torch.bool)
    stacked = torch.stack([empty if mask is None else mask for mask in masks])
    return class_logits_for(labels).unsqueeze(0), mask_logits_for(stacked).unsqueeze(0)


def small_criterion(**kwargs: float) -> SetCriterion:
    return SetCriterion(NUM_CLASSES, HungarianMatcher(num_points=256), num_points=256, **kwargs)


SCENE = [block(0, 0, 8, 8), block(8, 8, 16, 16), block(0, 10, 6, 16)]
SCENE_LABELS = [1, 3, 4]


# --- points -------------------------------------------------------------------------------


def test_point_sample_matches_hand_computed_bilinear_values() -> None:
    inputs = torch.tensor([[0.0, 1.0], [2.0, 3.0]]).view(1, 1, 2, 2)
    # Pixel centres sit at 0.25 and 0.75; the image centre averages all four; the corners read
    # half a pixel of zero padding in each direction (a quarter of the corner pixel).
    coords = torch.tensor(
        [[[0.25, 0.25], [0.75, 0.25], [0.25, 0.75], [0.5, 0.5], [0.5, 0.25], [0.0, 0.0], [1.0, 1.0]]]
    )
    expected = torch.tensor([0.0, 1.0, 2.0, 1.5, 0.5, 0.0, 0.75])
    assert torch.allclose(point_sample(inputs, coords)[0, 0], expected)


def test_importance_sampling_prefers_uncertain_points() -> None:
    logits = torch.full((1, 1, 8, 8), 10.0)
    logits[..., :4] = 0.0  # the left half is maximally uncertain
    generator = torch.Generator().manual_seed(0)
    points = uncertain_point_coords(logits, 2000, 3.0, 0.75, generator)
    uniform = uncertain_point_coords(logits, 2000, 3.0, 0.0, generator)
    assert points.shape == (1, 2000, 2)
    assert ((points >= 0) & (points <= 1)).all()
    # 75 % chosen among the uncertain, 25 % uniform -> about 87.5 % on the left.
    assert (points[0, :, 0] < 0.5).float().mean() > 0.83
    assert abs((uniform[0, :, 0] < 0.5).float().mean().item() - 0.5) < 0.05


def test_point_selection_is_deterministic_given_a_generator() -> None:
    logits = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    first = uncertain_point_coords(logits, 64, 3.0, 0.75, torch.Generator().manual_seed(5))
    second = uncertain_point_coords(logits, 64, 3.0, 0.75, torch.Generator().manual_seed(5))
    assert torch.equal(first, second)


# --- matcher ------------------------------------------------------------------------------


def test_matcher_finds_permuted_ground_truth() -> None:
    targets = frame(SCENE, SCENE_LABELS)
    # Query 4 predicts object 0, query 1 object 2, query 2 object 1; queries 0, 3 are empty.
    class_logits, mask_logits = prediction([None, 4, 3, None, 1], [None, SCENE[2], SCENE[1], None, SCENE[0]])
    pred, tgt = HungarianMatcher(num_points=256).match(class_logits[0], mask_logits[0], targets)
    assert pred.dtype == tgt.dtype == torch.int64
    assert pred.tolist() == [1, 2, 4] and tgt.tolist() == [2, 1, 0]


def test_matcher_separates_identical_masks_by_class() -> None:
    same = block(2, 2, 6, 6)
    targets = frame([same, same], [3, 2])
    class_logits, mask_logits = prediction([2, 3], [same, same])
    pred, tgt = HungarianMatcher(num_points=256).match(class_logits[0], mask_logits[0], targets)
    assert dict(zip(pred.tolist(), tgt.tolist())) == {0: 1, 1: 0}


def test_matcher_survives_non_finite_logits() -> None:
    targets = frame(SCENE[:1], SCENE_LABELS[:1])
    class_logits, mask_logits = prediction([1, 1], [SCENE[0], SCENE[0]])
    class_logits[0, 0] = float("nan")
    mask_logits[0, 0, 0, 0] = float("inf")
    mask_logits[0, 0, 1, 1] = float("nan")
    pred, tgt = HungarianMatcher(num_points=256).match(class_logits[0], mask_logits[0], targets)
    assert pred.tolist() == [1] and tgt.tolist() == [0]


def test_matcher_subsets_return_indices_into_the_full_lists() -> None:
    targets = frame(SCENE, SCENE_LABELS)
    class_logits, mask_logits = prediction([1, 3, 4, 1], [SCENE[0], SCENE[1], SCENE[2], SCENE[0]])
    pred, tgt = HungarianMatcher(num_points=256).match(
        class_logits[0], mask_logits[0], targets, torch.tensor([2, 3]), torch.tensor([0, 2])
    )
    assert pred.tolist() == [2, 3] and tgt.tolist() == [2, 0]


def test_matcher_without_targets_or_queries_returns_empty_pairs() -> None:
    class_logits, mask_logits = prediction([1], [SCENE[0]])
    pred, tgt = HungarianMatcher(num_points=16).match(class_logits[0], mask_logits[0], frame([], []))
    assert pred.numel() == tgt.numel() == 0 and pred.dtype == torch.int64


# --- criterion ----------------------------------------------------------------------------


def test_perfect_prediction_has_near_zero_loss_and_a_wrong_one_a_large_loss() -> None:
    targets = [frame(SCENE, SCENE_LABELS)]
    perfect = prediction([None, 4, 3, None, 1], [None, SCENE[2], SCENE[1], None, SCENE[0]])
    # Wrong classes, and every mask on the empty bottom-left quadrant.
    wrong = prediction([2, 0, 0, 2, 0], [block(8, 0, 16, 8)] * 5)
    criterion = small_criterion(class_weight=1.0, mask_weight=1.0, dice_weight=1.0)
    good = criterion([perfect], targets, generator=torch.Generator().manual_seed(0))
    bad = criterion([wrong], targets, generator=torch.Generator().manual_seed(0))
    # Not exactly zero: bilinear reads blur both the GT edge and the logit step over a fraction
    # of a cell, and importance sampling puts most points exactly there.
    assert good["loss_cls"] < 1e-6 and good["loss_dice"] < 0.08 and good["loss_mask"] < 0.15
    assert bad["loss_cls"] > 10 and bad["loss_dice"] > 0.5 and bad["loss_mask"] > 2


def test_deep_supervision_scores_every_prediction_and_weights_losses() -> None:
    targets = [frame(SCENE, SCENE_LABELS)]
    layers = [prediction([1, 3, 4], [SCENE[0], SCENE[1], SCENE[2]]) for _ in range(3)]
    criterion = small_criterion()
    losses = criterion(layers, targets, generator=torch.Generator().manual_seed(0))
    names = ["loss_cls", "loss_mask", "loss_dice"]
    assert set(losses) == {prefix + name for prefix in ("", "d0.", "d1.") for name in names}
    assert all(value.dim() == 0 for value in losses.values())
    unweighted = small_criterion(class_weight=1.0, mask_weight=1.0, dice_weight=1.0)
    raw = unweighted(layers, targets, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(losses["d1.loss_mask"], 5.0 * raw["d1.loss_mask"])
    assert torch.allclose(losses["d0.loss_cls"], 2.0 * raw["d0.loss_cls"])


def test_a_loss_without_a_weight_raises() -> None:
    criterion = small_criterion()
    del criterion.weights["loss_dice"]
    with pytest.raises(KeyError, match="loss_dice"):
        criterion([prediction([1], [SCENE[0]])], [frame(SCENE[:1], [1])])
    with pytest.raises(KeyError, match="d3.loss_new"):
        weight_losses({"d3.loss_new": torch.tensor(1.0)}, {"loss_cls": 1.0})


def test_scale_losses_prefixes_and_scales() -> None:
    scaled = scale_losses({"loss_cls": torch.tensor(4.0), "d0.loss_dice": torch.tensor(2.0)}, "ref_", 0.5)
    assert {key: value.item() for key, value in scaled.items()} == {"ref_loss_cls": 2.0, "ref_d0.loss_dice": 1.0}


def test_gradients_reach_class_and_mask_logits() -> None:
    class_logits, mask_logits = prediction([1, 3, None], [SCENE[0], SCENE[2], None])
    class_logits = (class_logits * 0.1).requires_grad_()
    mask_logits = (mask_logits * 0.1).requires_grad_()
    losses = small_criterion()([(class_logits, mask_logits)], [frame(SCENE[:2], [1, 3])])
    sum(losses.values()).backward()
    assert class_logits.grad.abs().sum() > 0 and mask_logits.grad.abs().sum() > 0


def test_frame_without_objects_gives_only_the_no_object_loss() -> None:
    class_logits, mask_logits = prediction([1, None], [SCENE[0], None])
    class_logits.requires_grad_()
    mask_logits.requires_grad_()
    losses = small_criterion()([(class_logits, mask_logits)], [frame([], [])])
    assert all(torch.isfinite(value) for value in losses.values())
    assert losses["loss_mask"] == 0 and losses["loss_dice"] == 0 and losses["loss_cls"] > 1
    sum(losses.values()).backward()
    assert mask_logits.grad is not None and class_logits.grad.abs().sum() > 0


def test_batch_of_two_and_determinism() -> None:
    first = prediction([1, 3, None], [SCENE[0], SCENE[1], None])
    second = prediction([4, None, 1], [SCENE[2], None, SCENE[0]])
    batch = [(torch.cat((first[0], second[0])) * 0.3, torch.cat((first[1], second[1])) * 0.3)]
    targets = [frame(SCENE[:2], [1, 3]), frame([SCENE[2]], [4])]
    criterion = small_criterion()
    losses = criterion(batch, targets, generator=torch.Generator().manual_seed(3))
    again = criterion(batch, targets, generator=torch.Generator().manual_seed(3))
    assert all(torch.equal(losses[key], again[key]) for key in losses)
    assert criterion.num_masks(targets, torch.device("cpu")).item() == 3


# --- track queries ------------------------------------------------------------------------

# Frame t: queries 0..5; queries 1, 3, 4 matched to objects 0, 1, 2 (ids 10, 11, 12).
TRACK_T = frame(SCENE, SCENE_LABELS, [10, 11, 12])
MATCH = (torch.tensor([1, 3, 4]), torch.tensor([0, 1, 2]))
FEATURES = torch.arange(6 * 4, dtype=torch.float32).view(6, 4)
T_MASKS = mask_logits_for(
    torch.stack([block(0, 0, 1, 1), SCENE[0], block(2, 2, 4, 4), SCENE[1], SCENE[2], block(12, 12, 16, 16)])
)
# Frame t+1: object 12 left, object 11 is listed first, a new object 13 appears.
TRACK_NEXT = frame([SCENE[1], SCENE[0], block(2, 2, 3, 3)], [3, 1, 2], [11, 10, 13])


def build(keep: float, false_positive: float, seed: int = 0) -> TrackQueries:
    return build_track_queries(
        FEATURES, T_MASKS, MATCH, TRACK_T, TRACK_NEXT, keep, false_positive, torch.Generator().manual_seed(seed)
    )


def test_track_queries_keep_all_pairs_and_find_next_frame_targets() -> None:
    tracks = build(keep=1.0, false_positive=0.0)
    assert tracks.source_queries.tolist() == [1, 3, 4]
    assert tracks.target_indices.tolist() == [1, 0, -1]  # id 10 -> index 1, id 11 -> 0, id 12 gone
    assert torch.equal(tracks.features, FEATURES[[1, 3, 4]])
    pred, tgt = tracks.assignment(static_queries=6)
    assert pred.tolist() == [6, 7, 8] and tgt.tolist() == [1, 0, -1]


def test_track_queries_drop_everything_with_keep_probability_zero() -> None:
    tracks = build(keep=0.0, false_positive=1.0)
    assert tracks.num_queries == 0 and tracks.features.shape == (0, 4)


def test_track_queries_add_one_distinct_unmatched_false_positive_per_kept_pair() -> None:
    tracks = build(keep=1.0, false_positive=1.0)
    assert tracks.num_queries == 6
    extra = tracks.source_queries[3:].tolist()
    assert sorted(extra) == [0, 2, 5]  # all unmatched queries, each once
    assert tracks.target_indices[3:].tolist() == [-1, -1, -1]


def test_track_query_sampling_statistics() -> None:
    generator = torch.Generator().manual_seed(0)
    kept = added = 0
    trials = 2000
    for _ in range(trials):
        tracks = build_track_queries(FEATURES, T_MASKS, MATCH, TRACK_T, TRACK_NEXT, 0.8, 0.2, generator)
        pairs = int((tracks.source_queries == MATCH[0].unsqueeze(1)).any(0).sum())
        kept += pairs
        added += tracks.num_queries - pairs
    assert abs(kept / (3 * trials) - 0.8) < 0.02
    assert abs(added / kept - 0.2) < 0.02


def test_false_positives_are_drawn_by_corner_distance_while_the_object_lives() -> None:
    # Query 0's box shares the top-left corner (0, 0) with matched query 1 (object id 10):
    # distance 0, so it is never the false positive while object 10 is present in t+1.
    only_first = (torch.tensor([1]), torch.tensor([0]))
    # Corners relative to (0, 0): query 2 at (2, 2), 3 at (8, 8), 4 at (10, 0), 5 at (12, 12).
    counts = dict.fromkeys([0, 2, 3, 4, 5], 0)
    generator = torch.Generator().manual_seed(0)
    for _ in range(400):
        tracks = build_track_queries(FEATURES, T_MASKS, only_first, TRACK_T, TRACK_NEXT, 1.0, 1.0, generator)
        counts[int(tracks.source_queries[1])] += 1
    assert counts[0] == 0 and counts[5] > counts[2] > 0  # farther corners are drawn more often
    gone = frame([SCENE[1]], [3], [11])  # object 10 absent in t+1: uniform draw
    drawn = set()
    for _ in range(100):
        tracks = build_track_queries(FEATURES, T_MASKS, only_first, TRACK_T, gone, 1.0, 1.0, generator)
        drawn.add(int(tracks.source_queries[1]))
    assert drawn == {0, 2, 3, 4, 5}


def test_mask_top_left_of_boxes() -> None:
    logits = mask_logits_for(torch.stack([block(2, 3, 5, 6), torch.zeros(PADDED, PADDED, dtype=torch.bool)]))
    assert mask_top_left(logits).tolist() == [[3.0, 2.0], [0.0, 0.0]]


def test_vanished_track_query_is_pushed_to_no_object() -> None:
    # Two static queries, one track query (index 2) whose object left: target -1.
    targets = [frame([SCENE[1]], [3])]
    still_claims = prediction([None, 3, 1], [None, SCENE[1], SCENE[0]])
    gave_up = prediction([None, 3, None], [None, SCENE[1], None])
    fixed = [(torch.tensor([2]), torch.tensor([-1]))]
    criterion = small_criterion()
    assignment = criterion.assign(*still_claims, targets, fixed, static_queries=2)
    assert assignment[0][0].tolist() == [1] and assignment[0][1].tolist() == [0]
    claims = criterion([still_claims], targets, fixed, static_queries=2)
    no_object = criterion([gave_up], targets, fixed, static_queries=2)
    assert claims["loss_cls"] > 3 and no_object["loss_cls"] < 1e-6


def test_ground_truth_claimed_by_a_track_query_is_not_matched_to_a_static_query() -> None:
    targets = [frame(SCENE[:2], [1, 3])]
    # Static query 0 is a perfect fit for object 0, but track query 3 holds object 0.
    layer = prediction([1, 3, None, 1], [SCENE[0], SCENE[1], None, SCENE[0]])
    fixed = [(torch.tensor([3]), torch.tensor([0]))]
    criterion = small_criterion()
    pred, tgt = criterion.assign(*layer, targets, fixed, static_queries=3)[0]
    assert dict(zip(pred.tolist(), tgt.tolist())) == {1: 1, 3: 0}
    losses = criterion([layer, layer], targets, fixed, static_queries=3)
    assert set(losses) == {"loss_cls", "loss_mask", "loss_dice", "d0.loss_cls", "d0.loss_mask", "d0.loss_dice"}
    # Query 0 now has to say "no object": its confident class 1 is penalised.
    assert losses["loss_cls"] > 1


@pytest.mark.parametrize(
    ("fixed", "static"),
    [
        (None, 2),  # track queries without an assignment
        ([(torch.tensor([3]), torch.tensor([0]))], None),  # assignment without static_queries
        ([(torch.tensor([1]), torch.tensor([0]))], 3),  # a static query in the fixed assignment
        ([(torch.tensor([3]), torch.tensor([5]))], 3),  # target out of range
        ([(torch.tensor([3, 3]), torch.tensor([0, 1]))], 3),  # one query twice
    ],
)
def test_invalid_fixed_assignments_raise(fixed: list[tuple[Tensor, Tensor]] | None, static: int | None) -> None:
    layer = prediction([1, 3, None, 1], [SCENE[0], SCENE[1], None, SCENE[0]])
    with pytest.raises(ValueError):
        small_criterion()([layer], [frame(SCENE[:2], [1, 3])], fixed, static_queries=static)


# --- sparsity -----------------------------------------------------------------------------


def test_sparsity_loss_is_zero_at_the_targets() -> None:
    fractions = [torch.tensor(0.7), torch.tensor(0.55), torch.tensor(0.4)]
    assert sparsity_loss(fractions, [0.7, 0.55, 0.4], torch.tensor(0.5)) == 0
    assert sparsity_loss(fractions, [0.7, 0.55, 0.4]) == 0


def test_sparsity_loss_value_and_gradient_direction() -> None:
    fractions = [torch.tensor(0.9, requires_grad=True), torch.tensor(0.2, requires_grad=True)]
    map_probability = torch.tensor(0.6, requires_grad=True)
    loss = sparsity_loss(fractions, [0.5, 0.5], map_probability)
    expected = 40.0 * (0.4**2 + 0.3**2 + 10.0 * 0.1**2) / (2 + 10)
    assert math.isclose(loss.item(), expected, rel_tol=1e-6)
    loss.backward()
    # Gradient descent moves each fraction toward its target.
    assert fractions[0].grad > 0 and fractions[1].grad < 0 and map_probability.grad > 0
    without_map = sparsity_loss([torch.tensor(0.9)], [0.5], None)
    assert math.isclose(without_map.item(), 40.0 * 0.16, rel_tol=1e-6)


def test_sparsity_loss_needs_one_target_per_fraction() -> None:
    with pytest.raises(ValueError):
        sparsity_loss([torch.tensor(0.5)], [0.5, 0.4])
