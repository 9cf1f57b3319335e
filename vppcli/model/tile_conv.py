"""A 3x3 convolution evaluated on some square tiles of a map only (sparse temporal reuse of the
pixel decoder's stride-4 FPN convolution; the other tiles keep the previous frame's output).

Each selected tile is cut out with a one-pixel halo and convolved without padding, which gives
exactly the pixels a padded convolution of the whole map gives there (up to float rounding):
the halo is the neighbourhood, and the map's zero padding is the halo at its border.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


def tile_grid(height: int, width: int, tile: int) -> tuple[int, int]:
    """(rows, cols) of `tile`-pixel tiles covering an [H, W] map (H, W multiples of `tile`)."""
    if height % tile or width % tile:
        raise ValueError(f"a {height}x{width} map does not split into {tile}-pixel tiles")
    return height // tile, width // tile


def tile_change(inputs: Tensor, reference: Tensor, tile: int) -> Tensor:
    """[1, C, H, W] x2 -> [rows * cols] per tile mean |delta| over the reference's mean deviation
    from its per-channel mean (the scale-free measure of `temporal_reuse.relative_change`)."""
    scale = (reference - reference.mean((2, 3), keepdim=True)).abs().mean().clamp_min(1e-6)
    per_pixel = (inputs - reference).abs().mean(1, keepdim=True)
    return F.avg_pool2d(per_pixel, tile).flatten() / scale


def conv_tiles(conv: nn.Conv2d, inputs: Tensor, tile: int, indices: Tensor) -> Tensor:
    """The 3x3, stride-1, padding-1 convolution `conv` on the tiles `indices` [M] (row-major tile
    numbers) of `inputs` [1, C_in, H, W]: [M, C_out, tile, tile]."""
    _, _, height, width = inputs.shape
    _, cols = tile_grid(height, width, tile)
    padded = F.pad(inputs, (1, 1, 1, 1))
    # [C, rows, cols, tile + 2, tile + 2]: overlapping windows, a view of `padded`.
    windows = padded[0].unfold(1, tile + 2, tile).unfold(2, tile + 2, tile)
    chosen = windows[:, indices // cols, indices % cols].transpose(0, 1)  # [M, C, tile + 2, tile + 2]
    return F.conv2d(chosen, conv.weight, conv.bias)


def scatter_tiles(base: Tensor, tile: int, indices: Tensor, tiles: Tensor) -> Tensor:
    """A copy of `base` [1, C, H, W] with the tiles `indices` [M] replaced by `tiles` [M, C, T, T]."""
    _, channels, height, width = base.shape
    rows, cols = tile_grid(height, width, tile)
    # The clone keeps the layout of `base` (channels-last, from the FPN), so what follows runs
    # the same kernels on reused maps as on fresh ones; splitting H and W is a view in any layout.
    out = base.clone()
    grid = out[0].view(channels, rows, tile, cols, tile).permute(1, 3, 0, 2, 4)
    grid[indices // cols, indices % cols] = tiles.to(out.dtype)
    return out


def take_tiles(inputs: Tensor, tile: int, indices: Tensor) -> Tensor:
    """The tiles `indices` [M] of `inputs` [1, C, H, W]: [M, C, tile, tile]."""
    _, channels, height, width = inputs.shape
    rows, cols = tile_grid(height, width, tile)
    grid = inputs[0].reshape(channels, rows, tile, cols, tile).permute(1, 3, 0, 2, 4)
    return grid[indices // cols, indices % cols]
