"""Compressed COCO run-length encoding of boolean masks (pycocotools), with `counts` as str."""

from __future__ import annotations

import numpy as np
import torch
from pycocotools import mask as mask_utils
from torch import Tensor

Rle = dict[str, object]  # {"size": [h, w], "counts": str}


def encode_masks(masks: Tensor) -> list[Rle]:
    """Encode masks as compressed RLE, JSON-ready.

    Args:
        masks: [M, H, W] bool (any device).

    Returns:
        M dicts {"size": [H, W], "counts": str}.
    """
    if masks.shape[0] == 0:
        return []
    # pycocotools wants [H, W, M] uint8 in Fortran order, i.e. [M, W, H] in C order: torch's
    # (multi-threaded) transpose is several times faster than numpy.asfortranarray here.
    columns_first = masks.detach().cpu().view(torch.uint8).transpose(1, 2).contiguous().numpy()
    encoded = mask_utils.encode(columns_first.transpose(2, 1, 0))
    return [{"size": [int(r["size"][0]), int(r["size"][1])], "counts": r["counts"].decode("ascii")} for r in encoded]


def rle_areas(rles: list[Rle]) -> list[int]:
    """Pixel count of each mask, from its runs (far cheaper than summing a full-size mask)."""
    if not rles:
        return []
    as_bytes = [{"size": rle["size"], "counts": str(rle["counts"]).encode("ascii")} for rle in rles]
    return [int(area) for area in mask_utils.area(as_bytes)]


def decode_rle(rle: Rle) -> np.ndarray:
    """[H, W] bool mask of one compressed RLE (counts as str or bytes)."""
    counts = rle["counts"]
    as_bytes = counts.encode("ascii") if isinstance(counts, str) else counts
    return mask_utils.decode({"size": list(rle["size"]), "counts": as_bytes}).astype(bool)
