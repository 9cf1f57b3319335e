"""Test-time post-processing of the Mask2Former outputs into per-frame detections.

This is the reference's `QueryAsTrID.instance_postprocess` (on top of mmdet's
`MaskFormerFusionHead.predict`) followed by the RoVIS confidence filter in `ROVIS.predict`
(reference-architecture.md, 3.4 and 3.5):

1. the stride-4 mask logits are upsampled to the padded input, cropped to the resized image and
   resized to the original frame (bilinear, align_corners False each time);
2. per-(query, class) probabilities are softmax(cls)[:, :C]; the top-Q of the Q*C pairs are kept,
   Q being the number of decoder rows (static plus track queries), so one query may appear
   several times with different labels;
3. mask = logit > 0, mask score = mean sigmoid inside the mask, det score = prob * mask score;
4. a detection from a track query survives with score > `track_score_threshold`, one from a
   static query with score > `new_score_threshold`; survivors are sorted by descending score.

Unlike the reference, masks are only upsampled for the queries that can still pass step 4: the
mask score is at most 1, so a pair whose class probability is already below its threshold is
dropped first. The result is the same; the full-resolution float masks of all Q queries (about
370 MB for 100 queries on a 720p frame) are never materialised.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from vppcli.config import TrackerConfig

# Upper bound on the float elements of one upsampling chunk (64 MiB of float32).
_CHUNK_ELEMENTS = 1 << 24


@dataclass
class Detections:
    """Confident detections of one frame, sorted by descending score, at original resolution.

    query_indices: [M] int64, row of the decoder query that produced the detection; an index
                   >= `num_static_queries` is track query number `index - num_static_queries`
                   in tracker order (`tracker.track_queries`).
    labels:        [M] int64, 0-based class index.
    scores:        [M] float32, class probability x mask score.
    masks:         [M, H0, W0] bool, at the original frame resolution.
    boxes:         [M, 4] float32 (x0, y0, x1 + 1, y1 + 1), the tight box of the mask; all zeros
                   for an empty mask.
    num_static_queries: number of static (learned) queries before the track queries. Carried
                   here so the tracker cannot be given a different split than the head used.
    """

    query_indices: Tensor
    labels: Tensor
    scores: Tensor
    masks: Tensor
    boxes: Tensor
    num_static_queries: int

    def __len__(self) -> int:
        return int(self.query_indices.numel())

    @property
    def image_size(self) -> tuple[int, int]:
        """(H0, W0) of the masks."""
        return int(self.masks.shape[-2]), int(self.masks.shape[-1])


def detections_from_predictions(
    class_logits: Tensor,
    mask_logits: Tensor,
    num_static_queries: int,
    padded_size: tuple[int, int],
    image_size: tuple[int, int],
    original_size: tuple[int, int],
    config: TrackerConfig,
) -> Detections:
    """Turn the last decoder layer's predictions for one frame into confident detections.

    Args:
        class_logits: [Q, C + 1] logits, the last column is "no object". Q = static + track queries.
        mask_logits: [Q, h, w] stride-4 mask logits of the padded image.
        num_static_queries: the first `num_static_queries` rows are static queries, the rest are
            track queries in tracker order.
        padded_size: (Hp, Wp) of the padded network input.
        image_size: (Hi, Wi) of the resized image inside the padded input.
        original_size: (H0, W0) of the decoded frame; masks and boxes are returned at this size.
        config: score thresholds (`track_score_threshold`, `new_score_threshold`).

    Returns:
        `Detections` with M <= Q entries, sorted by descending score (stable, so ties keep the
        top-k order). On the devices of the inputs.
    """
    num_rows, num_outputs = class_logits.shape
    num_classes = num_outputs - 1
    if mask_logits.shape[0] != num_rows:
        raise ValueError(f"{num_rows} class rows but {mask_logits.shape[0]} mask rows")
    device = class_logits.device
    probs = F.softmax(class_logits.float(), dim=-1)[:, :num_classes]
    # The reference overwrites `max_per_image` with the number of rows every frame: top-Q pairs.
    pair_probs, flat = probs.flatten().topk(num_rows, sorted=False)
    query = torch.div(flat, num_classes, rounding_mode="floor")
    labels = flat % num_classes

    is_track = query >= num_static_queries
    # det score = prob * mask score <= prob, so these pairs are the only ones that can pass the
    # final filter below (same float32 comparisons, hence the same decision).
    viable = _passes(pair_probs, is_track, config)
    pair_probs, query, labels, is_track = (t[viable] for t in (pair_probs, query, labels, is_track))

    height, width = original_size
    if query.numel() == 0:
        return _empty(num_static_queries, height, width, device)

    needed, pair_to_needed = torch.unique(query, return_inverse=True)
    binary, mask_scores = _masks_and_scores(
        mask_logits.index_select(0, needed), padded_size, image_size, original_size
    )
    scores = pair_probs * mask_scores[pair_to_needed]
    keep = _passes(scores, is_track, config).nonzero(as_tuple=True)[0]
    order = keep[torch.sort(scores[keep], descending=True, stable=True).indices]

    rows = pair_to_needed[order]
    return Detections(
        query_indices=query[order],
        labels=labels[order],
        scores=scores[order],
        masks=binary[rows],
        boxes=mask_boxes(binary)[rows],
        num_static_queries=num_static_queries,
    )


def mask_boxes(masks: Tensor) -> Tensor:
    """Tight boxes of boolean masks.

    Args:
        masks: [N, H, W] bool.

    Returns:
        [N, 4] float32 (x0, y0, x1 + 1, y1 + 1) with exclusive upper corner (mmdet `mask2bbox`);
        all zeros for an empty mask.
    """
    height, width = masks.shape[-2:]
    cols = masks.any(dim=1).to(torch.uint8)  # [N, W]
    rows = masks.any(dim=2).to(torch.uint8)  # [N, H]
    # argmax returns the first maximal index, so on the flipped rows it finds the last hit.
    x0 = cols.argmax(dim=1)
    x1 = width - cols.flip(1).argmax(dim=1)
    y0 = rows.argmax(dim=1)
    y1 = height - rows.flip(1).argmax(dim=1)
    boxes = torch.stack([x0, y0, x1, y1], dim=1).to(torch.float32)
    nonempty = cols.amax(dim=1, keepdim=True) > 0
    return torch.where(nonempty, boxes, boxes.new_zeros(()))


def _passes(scores: Tensor, is_track: Tensor, config: TrackerConfig) -> Tensor:
    """[N] bool: `scores` above the track-query or static-query threshold (strictly)."""
    return torch.where(
        is_track, scores > config.track_score_threshold, scores > config.new_score_threshold
    )


def _masks_and_scores(
    logits: Tensor,
    padded_size: tuple[int, int],
    image_size: tuple[int, int],
    original_size: tuple[int, int],
) -> tuple[Tensor, Tensor]:
    """Resize stride-4 mask logits to the original frame, binarise them and score them.

    Args:
        logits: [U, h, w] mask logits of the padded image.

    Returns:
        binary: [U, H0, W0] bool, logit > 0 after resizing.
        scores: [U] float32, sum(sigmoid * binary) / (area + 1e-6).

    Done in chunks of queries so only one chunk of float masks exists at a time; every query is
    resized on its own plane, so the chunking does not change any value.
    """
    padded_h, padded_w = padded_size
    image_h, image_w = image_size
    largest_plane = max(padded_h * padded_w, original_size[0] * original_size[1])
    chunk = max(1, _CHUNK_ELEMENTS // largest_plane)
    binaries, scores = [], []
    for part in logits.float().split(chunk):
        # Same call pattern as the reference: queries as channels of one image for the padded
        # upsampling, then queries as a batch of one-channel images for the original size.
        up = F.interpolate(part[None], size=padded_size, mode="bilinear", align_corners=False)[0]
        up = up[:, :image_h, :image_w]
        full = F.interpolate(up[:, None], size=original_size, mode="bilinear", align_corners=False)
        full = full[:, 0]
        binary = full > 0
        # In place: the logits are not needed any more and each plane is a large temporary.
        inside = full.sigmoid_().mul_(binary)
        # float64 accumulation: the per-row sum does not depend on how many rows are reduced
        # together (torch splits a single-row reduction across threads), so the subset computed
        # here scores every query exactly as a full pass would.
        inside = inside.flatten(1).sum(1, dtype=torch.float64).float()
        area = binary.flatten(1).sum(1).float()
        binaries.append(binary)
        scores.append(inside / (area + 1e-6))
    return torch.cat(binaries), torch.cat(scores)


def _empty(num_static_queries: int, height: int, width: int, device: torch.device) -> Detections:
    return Detections(
        query_indices=torch.zeros(0, dtype=torch.int64, device=device),
        labels=torch.zeros(0, dtype=torch.int64, device=device),
        scores=torch.zeros(0, dtype=torch.float32, device=device),
        masks=torch.zeros(0, height, width, dtype=torch.bool, device=device),
        boxes=torch.zeros(0, 4, dtype=torch.float32, device=device),
        num_static_queries=num_static_queries,
    )
