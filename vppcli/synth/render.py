"""Drawing a planned video frame by frame: background through the camera, objects in depth
order, then the sensor (blur, noise, exposure flicker). Ground truth is each object's visible
part: its drawn pixels minus those of nearer objects, absent when too little is left.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np

from vppcli.synth.backgrounds import make_background
from vppcli.synth.config import SynthConfig
from vppcli.synth.motion import VideoPlan, plan_video
from vppcli.synth.shapes import CATEGORIES, SPRITE_SIZE, Sprite, random_sprite

# An object showing fewer pixels than this (after occlusion and clipping at the border) is
# absent from the ground truth in that frame: no annotation of slivers nobody could segment.
MIN_VISIBLE_PIXELS = 16
MIN_VISIBLE_FRACTION = 0.01  # of the object's whole area at that frame's scale
_CANVAS_MARGIN = 0.15  # background beyond each frame border, room for the camera to move
_NOISE_PAD = 64  # pixels; the noise field is this much larger than a frame in each direction


@dataclass(frozen=True)
class SynthVideo:
    """Everything random about one video, drawn up front (pixels come from `render_frames`).

    plan: objects and camera; sprites: one per object (plan order).
    canvas: [Hc, Wc, 3] uint8 background in world coordinates shifted by `canvas_offset` (x, y).
    blur: Gaussian sigma in pixels (0: sharp); noise: sensor noise sigma in grey levels.
    sensor_seed: the stream of per-frame sensor randomness (noise, exposure).
    """

    plan: VideoPlan
    sprites: tuple[Sprite, ...]
    canvas: np.ndarray
    canvas_offset: tuple[float, float]
    blur: float
    noise: float
    sensor_seed: np.random.SeedSequence

    @property
    def category_names(self) -> tuple[str, ...]:
        return tuple(CATEGORIES[o.category] for o in self.plan.objects)


@dataclass(frozen=True)
class RenderedFrame:
    """image: [H, W, 3] uint8 RGB. masks: per object (plan order) its [H, W] bool visible
    ground truth, or None when absent. drawn: per object its [H, W] bool pixels painted in the
    frame before nearer objects covered some (None: hidden or outside the frame)."""

    image: np.ndarray
    masks: tuple[np.ndarray | None, ...]
    drawn: tuple[np.ndarray | None, ...]


def build_video(config: SynthConfig, index: int, source: Literal["photos", "procedural"]) -> SynthVideo:
    """Draw video `index` of the split: independent streams for plan, looks, background, sensor."""
    plan_seed, look_seed, background_seed, sensor_seed = config.video_seed(index).spawn(4)
    plan = plan_video(np.random.default_rng(plan_seed), config)
    look = np.random.default_rng(look_seed)
    sprites = tuple(random_sprite(look, CATEGORIES[o.category]) for o in plan.objects)
    blur = 0.0 if look.random() < 0.4 else float(look.uniform(0.4, 1.2))
    noise = float(look.uniform(0.0, 6.0))
    margin_x, margin_y = round(config.width * _CANVAS_MARGIN), round(config.height * _CANVAS_MARGIN)
    canvas = make_background(np.random.default_rng(background_seed), config.height + 2 * margin_y,
                             config.width + 2 * margin_x, source)
    return SynthVideo(plan, sprites, canvas, (float(margin_x), float(margin_y)), blur, noise, sensor_seed)


def render_frames(video: SynthVideo, config: SynthConfig) -> Iterator[RenderedFrame]:
    """The video's frames in order, with their ground truth."""
    sensor = np.random.default_rng(video.sensor_seed)
    # Drawing fresh Gaussian noise costs more than all the rest of a frame: each frame takes a
    # random window of one larger noise field instead (the same statistics, per pixel).
    noise_field = sensor.standard_normal((config.height + _NOISE_PAD, config.width + _NOISE_PAD, 3),
                                         dtype=np.float32) * np.float32(video.noise)
    height, width = config.height, config.width
    near_first = sorted(range(len(video.plan.objects)), key=lambda i: -video.plan.objects[i].depth)
    exposure = 1.0
    for t in range(config.frames):
        camera = video.plan.camera.world_to_frame(t, height, width)
        from_canvas = camera @ np.array([[1, 0, -video.canvas_offset[0]], [0, 1, -video.canvas_offset[1]], [0, 0, 1]])
        image = cv2.warpAffine(video.canvas, from_canvas[:2], (width, height), flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_REFLECT_101)
        drawn_masks: list[np.ndarray | None] = [None] * len(video.sprites)
        for i in reversed(near_first):  # far to near: nearer objects paint over farther ones
            plan = video.plan.objects[i]
            if not plan.hidden[t]:
                to_frame = (camera @ np.vstack([plan.sprite_to_world(t), [0, 0, 1]]))[:2]
                drawn_masks[i] = _paint(image, video.sprites[i], to_frame)
        masks = _visible(video, t, drawn_masks, near_first)
        exposure = float(np.clip(exposure + sensor.normal(0, 0.01), 0.9, 1.1))  # slow flicker
        dy, dx = sensor.integers(0, _NOISE_PAD + 1, 2)
        noise = noise_field[dy:dy + height, dx:dx + width]
        yield RenderedFrame(_sensor(image, video.blur, exposure, noise), masks, tuple(drawn_masks))


def _paint(image: np.ndarray, sprite: Sprite, to_frame: np.ndarray) -> np.ndarray | None:
    """Draw `sprite` through the [2, 3] affine `to_frame` into `image` ([H, W, 3] uint8, in place).

    Returns its [H, W] bool mask in the frame, or None when no pixel lands in the frame. Only
    the sprite's bounding box is warped: objects are small next to the frame."""
    height, width = image.shape[:2]
    corners = to_frame @ np.array([[0, SPRITE_SIZE, 0, SPRITE_SIZE], [0, 0, SPRITE_SIZE, SPRITE_SIZE], [1, 1, 1, 1]])
    x0, y0 = max(math.floor(corners[0].min()) - 1, 0), max(math.floor(corners[1].min()) - 1, 0)
    x1, y1 = min(math.ceil(corners[0].max()) + 2, width), min(math.ceil(corners[1].max()) + 2, height)
    if x0 >= x1 or y0 >= y1:
        return None
    local = to_frame - np.array([[0, 0, x0], [0, 0, y0]])
    box = (x1 - x0, y1 - y0)
    # Nearest-neighbour sampling of the boolean sprite: the mask is exactly the painted pixels.
    mask = cv2.warpAffine(sprite.mask.view(np.uint8), local, box, flags=cv2.INTER_NEAREST).astype(bool)
    if not mask.any():
        return None
    texture = cv2.warpAffine(sprite.image, local, box, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    region = image[y0:y1, x0:x1]
    region[mask] = texture[mask]
    full = np.zeros((height, width), bool)
    full[y0:y1, x0:x1] = mask
    return full


def _visible(video: SynthVideo, t: int, drawn: list[np.ndarray | None],
             near_first: list[int]) -> tuple[np.ndarray | None, ...]:
    """Per object, its drawn mask minus nearer objects' pixels; None below the visibility threshold."""
    zoom = video.plan.camera.zoom[t]
    occupied: np.ndarray | None = None
    visible: list[np.ndarray | None] = [None] * len(drawn)
    for i in near_first:
        mask = drawn[i]
        if mask is None:
            continue
        own = mask if occupied is None else mask & ~occupied
        occupied = mask.copy() if occupied is None else occupied | mask
        # The whole object's area at this frame's scale, wherever it is (in or out of the frame).
        plan = video.plan.objects[i]
        whole = video.sprites[i].area * (plan.radius[t] * zoom / (SPRITE_SIZE / 2)) ** 2
        area = int(own.sum())
        if area >= MIN_VISIBLE_PIXELS and area >= MIN_VISIBLE_FRACTION * whole:
            visible[i] = own
    return tuple(visible)


def _sensor(image: np.ndarray, blur: float, exposure: float, noise: np.ndarray) -> np.ndarray:
    """Optics then sensor: blur, exposure, additive noise ([H, W, 3] float32); [H, W, 3] uint8 in and out."""
    if blur > 0:
        image = cv2.GaussianBlur(image, (0, 0), blur)
    exposed = image.astype(np.float32) * np.float32(exposure) + noise
    return np.clip(exposed, 0, 255).astype(np.uint8)
