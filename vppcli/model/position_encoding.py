"""Sine positional encoding of a 2-D feature map (DETR / mmcv `SinePositionalEncoding`).

The head always encodes whole padded maps (no padding mask), so the encoding depends only on
the map size and is computed on the fly; nothing is cached on a module.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

TEMPERATURE = 10000.0
SCALE = 2.0 * math.pi
EPS = 1e-6


def sine_position_encoding(
    batch: int,
    height: int,
    width: int,
    num_feats: int = 128,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Normalised sine encoding of an all-valid `height` x `width` map.

    Channel 2k of each half is sin(p / t_k), channel 2k+1 is cos(p / t_k), with
    t_k = 10000^(2k / num_feats) and p = (index + 1) / (size + 1e-6) * 2*pi.

    Returns:
        [batch, 2 * num_feats, height, width]: y-part (rows) in the first `num_feats` channels,
        x-part (columns) in the last `num_feats`. The batch dimension is an expanded view.
    """
    # Computed in float32 with mmcv's operation order so official weights see the same values.
    rows = torch.arange(1, height + 1, dtype=torch.float32, device=device)
    cols = torch.arange(1, width + 1, dtype=torch.float32, device=device)
    rows = rows / (rows[-1:] + EPS) * SCALE
    cols = cols / (cols[-1:] + EPS) * SCALE
    dim_t = torch.arange(num_feats, dtype=torch.float32, device=device)
    dim_t = TEMPERATURE ** (2 * (dim_t // 2) / num_feats)

    def interleave(positions: Tensor) -> Tensor:  # [n] -> [n, num_feats]
        angles = positions[:, None] / dim_t
        return torch.stack((angles[:, 0::2].sin(), angles[:, 1::2].cos()), dim=2).flatten(1)

    pos_y = interleave(rows)[:, None, :].expand(height, width, num_feats)
    pos_x = interleave(cols)[None, :, :].expand(height, width, num_feats)
    pos = torch.cat((pos_y, pos_x), dim=2).permute(2, 0, 1).to(dtype)
    return pos.unsqueeze(0).expand(batch, -1, -1, -1)
