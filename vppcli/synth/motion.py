"""What happens in a video, before any pixel is drawn: which objects, where they are in every
frame (centre, scale, rotation), when they are hidden, their depth order, and the camera path.

Coordinates are in pixels of the first frame ("world"); the camera maps world to frame, so
panning and zooming move background and objects together. Object motion kinds:
- bounce: a smooth random walk kept inside the frame (reflected at the borders);
- enter: starts beyond a border and moves in; leave: starts inside and exits through a border;
- cross: a straight path through another object's position at a chosen frame (occlusions).
Any object may jump (abrupt motion: a sudden shift or turn), and one object of some videos is
hidden for a few frames and comes back (same identity).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from vppcli.synth.config import SynthConfig
from vppcli.synth.shapes import CATEGORIES, SPRITE_SIZE

Motion = Literal["bounce", "enter", "leave", "cross"]
_RADIUS = (0.09, 0.2)  # object radius as a fraction of the frame's short side
_SPEED = (0.01, 0.035)  # nominal speed, short sides per frame, before the --speed factor
_JUMP_RATE = 0.25  # chance that an object jumps once
_SAME_CATEGORY_RATE = 0.8  # chance that a video holds two objects of one category
_ENTER_LEAVE_RATE = 0.3  # chance for each object to enter, and (separately) to leave


@dataclass(frozen=True)
class ObjectPlan:
    """One object over T frames.

    category: index into CATEGORIES.
    depth:    drawing order, 0 = farthest (drawn first, occluded by all others).
    centre:   [T, 2] float64 world (x, y) of the sprite centre.
    radius:   [T] float64 pixels per half sprite (the shape fills about 0.9 of it).
    angle:    [T] float64 rotation in degrees (counter-clockwise).
    aspect:   stretch of the sprite's x axis against its y axis (shape-preserving within a class).
    hidden:   [T] bool, frames in which the object is not drawn at all.
    motion:   how it moves (see the module docstring).
    """

    category: int
    depth: int
    centre: np.ndarray
    radius: np.ndarray
    angle: np.ndarray
    aspect: float
    hidden: np.ndarray
    motion: Motion

    def sprite_to_world(self, t: int) -> np.ndarray:
        """[2, 3] affine map from sprite pixel coordinates to world coordinates at frame t."""
        theta = np.deg2rad(self.angle[t])
        scale = self.radius[t] / (SPRITE_SIZE / 2)
        rotation = np.array([[np.cos(theta), np.sin(theta)], [-np.sin(theta), np.cos(theta)]])
        linear = rotation @ np.diag([scale * self.aspect, scale / self.aspect])
        offset = self.centre[t] - linear @ np.array([SPRITE_SIZE / 2, SPRITE_SIZE / 2])
        return np.hstack([linear, offset[:, None]])


@dataclass(frozen=True)
class CameraPlan:
    """zoom: [T] float64 magnification; pan: [T, 2] float64 world point at the frame centre."""

    zoom: np.ndarray
    pan: np.ndarray

    def world_to_frame(self, t: int, height: int, width: int) -> np.ndarray:
        """[3, 3] homogeneous affine map from world to frame coordinates at frame t."""
        z = self.zoom[t]
        return np.array([[z, 0, width / 2 - z * self.pan[t, 0]], [0, z, height / 2 - z * self.pan[t, 1]], [0, 0, 1]])


@dataclass(frozen=True)
class VideoPlan:
    objects: tuple[ObjectPlan, ...]
    camera: CameraPlan


def plan_video(rng: np.random.Generator, config: SynthConfig) -> VideoPlan:
    """Draw one video's objects and camera (all randomness from `rng`)."""
    count = int(rng.integers(config.min_objects, config.max_objects + 1))
    categories = _categories(rng, count)
    depths = rng.permutation(count)
    objects: list[ObjectPlan] = []
    for index in range(count):
        motion = _motion_kind(rng, config, has_target=bool(objects))
        objects.append(_plan_object(rng, config, int(categories[index]), int(depths[index]), motion, objects))
    hider = [i for i, o in enumerate(objects) if o.motion == "bounce"]
    if hider and config.frames >= 5 and rng.random() < config.reappear:
        chosen = hider[int(rng.integers(len(hider)))]
        objects[chosen] = _with_gap(rng, objects[chosen], config.frames)
    return VideoPlan(tuple(objects), _camera(rng, config))


def _categories(rng: np.random.Generator, count: int) -> np.ndarray:
    """[count] category indices; usually two share a category (instances must be told apart)."""
    chosen = rng.choice(len(CATEGORIES), size=count, replace=count > len(CATEGORIES))
    if count >= 2 and rng.random() < _SAME_CATEGORY_RATE:
        chosen[-1] = chosen[0]
    return rng.permutation(chosen)


def _motion_kind(rng: np.random.Generator, config: SynthConfig, has_target: bool) -> Motion:
    if has_target and rng.random() < config.occlusion:
        return "cross"
    if config.frames >= 4:
        if rng.random() < _ENTER_LEAVE_RATE:
            return "enter"
        if rng.random() < _ENTER_LEAVE_RATE:
            return "leave"
    return "bounce"


def _plan_object(rng: np.random.Generator, config: SynthConfig, category: int, depth: int, motion: Motion,
                 earlier: list[ObjectPlan]) -> ObjectPlan:
    frames, short = config.frames, min(config.height, config.width)
    t = np.arange(frames)
    base = rng.uniform(*_RADIUS) * short
    # Slow exponential growth or shrinking plus a gentle pulse: scale change without popping.
    growth = rng.uniform(-0.5, 0.5) * t / max(frames - 1, 1)
    radius = base * np.exp(growth + 0.05 * np.sin(t * rng.uniform(0.1, 0.5) + rng.uniform(0, 6.3)))
    spin = rng.normal(0, 4.0) * config.speed
    angle = rng.uniform(0, 360) + spin * t
    speed = rng.uniform(*_SPEED) * short * config.speed
    if motion == "cross":
        centre = _crossing(rng, earlier, frames, speed, base)
    else:
        centre = _walk(rng, config, motion, speed, float(radius.max()))
    if rng.random() < _JUMP_RATE and frames >= 3:
        jump_at = int(rng.integers(1, frames))
        if rng.random() < 0.5:  # a sudden shift (a dropped frame, a fast move)
            centre[jump_at:] += rng.normal(0, 0.12 * short, 2)
        else:  # a sudden spin
            angle[jump_at:] += rng.uniform(45, 135) * rng.choice((-1, 1))
    hidden = np.zeros(frames, bool)
    return ObjectPlan(category, depth, centre, radius, angle, float(np.exp(rng.uniform(-0.2, 0.2))), hidden, motion)


def _walk(rng: np.random.Generator, config: SynthConfig, motion: Motion, speed: float, radius: float) -> np.ndarray:
    """[T, 2] centres of a smooth random walk at about `speed` px/frame; reflected at the
    borders except while entering or after the leaving frame."""
    frames, width, height = config.frames, config.width, config.height
    low = np.array([radius, radius])
    high = np.array([max(width - radius, radius + 1), max(height - radius, radius + 1)])
    heading = rng.uniform(0, 2 * np.pi)
    velocity = speed * np.array([np.cos(heading), np.sin(heading)])
    position = rng.uniform(low, high)
    free_until, free_from = 0, frames  # frames before / after which borders do not reflect
    if motion == "enter":
        side = int(rng.integers(4))
        position, inward = _beyond_border(rng, side, radius, width, height)
        # Fast enough to be fully inside by the middle of the video.
        velocity = inward * max(speed, 2.6 * radius / max(frames / 2, 1))
        free_until = frames
    elif motion == "leave":
        free_from = int(rng.integers(frames // 3, max(frames // 3 + 1, frames - 2)))
    centres = np.empty((frames, 2))
    for t in range(frames):
        centres[t] = position
        if t == free_from:  # head for the nearest border, fast enough to be gone by the end
            distances = np.array([position[0], position[1], width - position[0], height - position[1]])
            side = int(np.argmin(distances))
            outward = -_inward(side)
            # The sprite's corners reach past `radius` (aspect, rotation): clear it by a margin.
            needed = (distances[side] + 1.8 * radius) / max(frames - 2 - t, 1)
            velocity = outward * max(speed, needed)
        velocity = velocity + rng.normal(0, 0.08 * speed, 2)  # smooth: acceleration, not position, is noisy
        position = position + velocity
        if free_until and np.all((position >= low) & (position <= high)):
            free_until = 0  # fully inside: from now on it bounces like the others
        if not free_until and t < free_from:
            for axis in range(2):
                if not low[axis] <= position[axis] <= high[axis]:
                    velocity[axis] = -velocity[axis]
                    position[axis] = np.clip(position[axis], low[axis], high[axis])
    return centres


def _inward(side: int) -> np.ndarray:
    """Unit vector into the frame from border `side` (0 left, 1 top, 2 right, 3 bottom)."""
    return np.array([(1.0, 0.0), (0.0, 1.0), (-1.0, 0.0), (0.0, -1.0)][side])


def _beyond_border(rng: np.random.Generator, side: int, radius: float, width: int,
                   height: int) -> tuple[np.ndarray, np.ndarray]:
    """(a centre just outside border `side`, the unit vector pointing in)."""
    inward = _inward(side)
    along = rng.uniform(0.2, 0.8)
    # 1.3 radii out: the sprite's corners (aspect, rotation) reach beyond one radius.
    out = 1.3 * radius
    point = {0: (-out, along * height), 1: (along * width, -out),
             2: (width + out, along * height), 3: (along * width, height + out)}[side]
    return np.array(point, dtype=float), inward


def _crossing(rng: np.random.Generator, earlier: list[ObjectPlan], frames: int, speed: float,
              radius: float) -> np.ndarray:
    """[T, 2] straight path that overlaps an earlier object's centre at a middle frame, fast
    enough to pass it rather than sit on it (unless `speed` is 0: static objects)."""
    target = earlier[int(rng.integers(len(earlier)))]
    meet = int(rng.integers(frames // 3, max(frames // 3 + 1, 2 * frames // 3)))
    reach = radius + float(target.radius[meet])
    if speed > 0:
        speed = max(speed, 2 * reach / max(frames, 1))
    heading, side = rng.uniform(0, 2 * np.pi, 2)
    velocity = speed * np.array([np.cos(heading), np.sin(heading)])
    # Partly overlapping, not concentric: both objects keep some visible pixels.
    offset = rng.uniform(0.2, 0.7) * reach * np.array([np.cos(side), np.sin(side)])
    return target.centre[meet] + offset + velocity * (np.arange(frames) - meet)[:, None]


def _with_gap(rng: np.random.Generator, plan: ObjectPlan, frames: int) -> ObjectPlan:
    """The object hidden for 2-4 frames in the middle (at least one visible frame either side)."""
    length = int(rng.integers(2, min(4, frames - 3) + 1))
    start = int(rng.integers(1, frames - length))  # frames start-1 and start+length stay visible
    hidden = plan.hidden.copy()
    hidden[start:start + length] = True
    return ObjectPlan(plan.category, plan.depth, plan.centre, plan.radius, plan.angle, plan.aspect, hidden,
                      plan.motion)


def _camera(rng: np.random.Generator, config: SynthConfig) -> CameraPlan:
    """A slow pan and zoom with a little hand-held shake; identity at frame 0."""
    frames, short = config.frames, min(config.height, config.width)
    progress = np.arange(frames) / max(frames - 1, 1)
    moving = rng.random() < 0.7
    zoom = 1 + (rng.uniform(-0.08, 0.12) if moving else 0.0) * progress
    drift = rng.normal(0, 0.06 * short, 2) * config.speed if moving else np.zeros(2)
    shake = rng.normal(0, 0.003 * short, (frames, 2))
    shake[0] = 0
    pan = np.array([config.width / 2, config.height / 2]) + progress[:, None] * drift + shake
    return CameraPlan(zoom, pan)
