"""Frame pre-processing as the reference evaluates: resize so the long side is `long_side`
(up- or down-scaling, aspect kept, cv2 bilinear), ImageNet normalisation, zero padding at the
bottom/right to a multiple of 32 (in normalised space)."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from vppcli.config import PreprocessConfig


@dataclass(frozen=True)
class FrameGeometry:
    original_size: tuple[int, int]  # (H0, W0) of the decoded frame
    image_size: tuple[int, int]  # (Hi, Wi) after resizing
    padded_size: tuple[int, int]  # (Hp, Wp) network input

    @property
    def grid(self) -> tuple[int, int]:
        """Patch grid (H, W) at stride 16."""
        return self.padded_size[0] // 16, self.padded_size[1] // 16


def frame_geometry(height: int, width: int, config: PreprocessConfig) -> FrameGeometry:
    scale = config.long_side / max(height, width)
    resized = (int(height * scale + 0.5), int(width * scale + 0.5))
    div = config.pad_divisor
    padded = (-(-resized[0] // div) * div, -(-resized[1] // div) * div)
    return FrameGeometry((height, width), resized, padded)


def preprocess_frame(frame_rgb: np.ndarray, config: PreprocessConfig, device: torch.device | str = "cpu",
                     ) -> tuple[Tensor, FrameGeometry]:
    """
    Args:
        frame_rgb: [H0, W0, 3] uint8 RGB.
    Returns:
        [1, 3, Hp, Wp] float32 normalised, padded tensor on `device`, and its geometry.
    """
    if frame_rgb.ndim != 3 or frame_rgb.shape[2] != 3 or frame_rgb.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 RGB frame, got {frame_rgb.dtype} {frame_rgb.shape}")
    geometry = frame_geometry(frame_rgb.shape[0], frame_rgb.shape[1], config)
    height, width = geometry.image_size
    resized = frame_rgb
    if (height, width) != frame_rgb.shape[:2]:
        resized = cv2.resize(frame_rgb, (width, height), interpolation=cv2.INTER_LINEAR)
    image = torch.from_numpy(np.ascontiguousarray(resized)).to(device).permute(2, 0, 1).float()
    mean = torch.tensor(config.mean, device=image.device).view(3, 1, 1)
    std = torch.tensor(config.std, device=image.device).view(3, 1, 1)
    image = (image - mean) / std
    pad_h, pad_w = geometry.padded_size[0] - height, geometry.padded_size[1] - width
    return F.pad(image, (0, pad_w, 0, pad_h))[None], geometry
