"""Clip-consistent augmentation: one draw per clip (long side, horizontal flip), applied
identically to every frame and its masks.

Images go through `vppcli.preprocess.preprocess_frame`, the inference code itself (cv2 bilinear
resize of the long side, normalisation, zero padding bottom/right to the pad divisor after
normalisation), so training and inference inputs cannot drift apart.

Masks are resized with pixel-area averaging (cv2 INTER_AREA) and kept where at least half of
the output pixel is covered. Unlike nearest neighbour (cv2's INTER_NEAREST maps dst x to
floor(x * s), a shift of up to half a source pixel), this is centred like the bilinear image
resize, so masks stay aligned with the image content (tested down and up), and when
downscaling 1280x720 to a few hundred pixels thin parts are kept or dropped by coverage rather
than by where the sampling grid happens to fall.
The flip is applied at the original resolution to image and masks alike, before resizing.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch import Tensor

from vppcli.config import PreprocessConfig
from vppcli.preprocess import FrameGeometry, preprocess_frame
from vppcli.training.clips import ClipConfig


@dataclass(frozen=True)
class ClipTransform:
    """The augmentation of one clip: the long side of its frames and whether they are mirrored."""

    long_side: int
    flip: bool


def draw_transform(rng: np.random.Generator, config: ClipConfig) -> ClipTransform:
    long_side = int(config.long_sides[int(rng.integers(len(config.long_sides)))])
    return ClipTransform(long_side, bool(rng.random() < config.flip_prob))


def transform_frame(frame_bgr: np.ndarray, masks: np.ndarray, transform: ClipTransform,
                    preprocess: PreprocessConfig) -> tuple[Tensor, Tensor]:
    """Augment one frame and its object masks.

    Args:
        frame_bgr: [H0, W0, 3] uint8 as cv2 decodes it.
        masks:     [H0, W0, G] uint8 0/1, G >= 0, ideally Fortran-ordered as pycocotools decodes.
    Returns:
        image [3, Hp, Wp] float32 normalised, zero padded; masks [G, Hp, Wp] bool, False padding.
        A mask may come out empty (an object too small for the new size).
    """
    rgb = cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2RGB)
    if transform.flip:
        rgb = cv2.flip(rgb, 1)
    image, geometry = preprocess_frame(rgb, dataclasses.replace(preprocess, long_side=transform.long_side))
    return image[0], resize_masks(masks, geometry, transform.flip)


def resize_masks(masks: np.ndarray, geometry: FrameGeometry, flip: bool) -> Tensor:
    """[H0, W0, G] 0/1 masks -> [G, Hp, Wp] bool: mirrored if `flip`, area-resized to the image
    size, kept at half coverage or more, padded with False."""
    height, width = geometry.image_size
    padded = torch.zeros(masks.shape[2], *geometry.padded_size, dtype=torch.bool)
    # pycocotools decodes column-major, i.e. [G, W0, H0] in memory: each mask is resized as its
    # transpose (a free view) rather than after a full-resolution copy into row-major order.
    for index, columns in enumerate(np.ascontiguousarray(masks.transpose(2, 1, 0))):
        if flip:
            columns = cv2.flip(columns, 0)  # rows of the transpose are the columns of the frame
        # 0/255 rather than 0/1 so that the uint8 area average keeps the coverage to 1/255.
        resized = cv2.resize(columns * np.uint8(255), (height, width), interpolation=cv2.INTER_AREA)
        padded[index, :height, :width] = torch.from_numpy(resized >= 128).T
    return padded
