"""Point sampling for the mask losses: read masks at continuous points instead of resizing them.

Predictions live at stride 4 and ground truth at the padded input resolution; reading both at
the same normalised (x, y) points compares them without upsampling either. Coordinates are in
[0, 1] with the `align_corners=False` convention: (0, 0) is the top-left corner of the top-left
pixel, (1, 1) the bottom-right corner of the bottom-right pixel, so a point means the same place
at every resolution.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def point_sample(inputs: Tensor, coords: Tensor) -> Tensor:
    """Bilinear read of `inputs` at normalised points.

    Args:
        inputs: [N, C, H, W] floating-point maps.
        coords: [N, P, 2] points as (x, y) in [0, 1].
    Returns:
        [N, C, P] values; points outside the map read zero (`grid_sample`'s zero padding).
    """
    grid = (2.0 * coords - 1.0).to(inputs.dtype).unsqueeze(2)  # grid_sample wants [-1, 1], [N, P, 1, 2]
    return F.grid_sample(inputs, grid, mode="bilinear", align_corners=False).squeeze(3)


def uniform_points(
    batch: int, num_points: int, device: torch.device | str, generator: torch.Generator | None = None
) -> Tensor:
    """[batch, num_points, 2] uniform points in [0, 1)².

    Drawn on the generator's device (or `device` without one), so a CPU generator gives the same
    points whatever device the model runs on.
    """
    source = generator.device if generator is not None else device
    return torch.rand(batch, num_points, 2, generator=generator, device=source).to(device)


@torch.no_grad()
def uncertain_point_coords(
    mask_logits: Tensor,
    num_points: int,
    oversample_ratio: float,
    importance_ratio: float,
    generator: torch.Generator | None = None,
) -> Tensor:
    """PointRend importance sampling: mostly points where the prediction is least certain.

    Draws `num_points * oversample_ratio` uniform candidates per mask, scores each by -|logit|
    read *at the candidate* (scoring the coarse map first and then picking points would favour
    whole pixels, not the boundary between them), keeps the `importance_ratio * num_points` most
    uncertain and fills up with fresh uniform points so that confident regions are still seen.

    Args:
        mask_logits: [N, 1, h, w] mask logits (one mask per row).
        num_points: P, points per mask.
        oversample_ratio: >= 1, candidates per returned point.
        importance_ratio: in [0, 1], share of the P points chosen by uncertainty.
        generator: random source; the global torch RNG without one.
    Returns:
        [N, P, 2] points as (x, y) in [0, 1]; the uncertain ones first.
    """
    if oversample_ratio < 1.0 or not 0.0 <= importance_ratio <= 1.0:
        raise ValueError(
            f"need oversample_ratio >= 1 and importance_ratio in [0, 1], got {oversample_ratio}, {importance_ratio}"
        )
    count, device = mask_logits.shape[0], mask_logits.device
    num_candidates = int(num_points * oversample_ratio)
    num_uncertain = int(importance_ratio * num_points)
    candidates = uniform_points(count, num_candidates, device, generator)
    uncertainty = -point_sample(mask_logits.float(), candidates)[:, 0].abs()  # [N, candidates]
    chosen = uncertainty.topk(num_uncertain, dim=1).indices
    uncertain = torch.gather(candidates, 1, chosen.unsqueeze(-1).expand(-1, -1, 2))
    fill = uniform_points(count, num_points - num_uncertain, device, generator)
    return torch.cat((uncertain, fill), dim=1)
