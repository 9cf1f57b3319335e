"""Write the example clip: coloured balls moving over a textured background (no download needed).

    python examples/make_clip.py examples/clip.mp4 --frames 48 --size 360x640 --fps 24

The frames are generated, so the clip is free of any licence. It streams frames to the encoder,
so long clips (the memory benchmark uses 2,000 frames) cost no memory.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

COLOURS = ((230, 60, 50), (60, 190, 80), (60, 90, 230), (240, 200, 40))


def scene_frames(count: int, height: int, width: int, seed: int = 0) -> Iterator[np.ndarray]:
    """[H, W, 3] uint8 RGB frames: four balls on smooth paths over a fixed noisy texture."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    background = np.stack([110 + 50 * np.sin(xs / 41.0 + c) * np.cos(ys / 29.0 - c) for c in range(3)], -1)
    background = np.clip(background + rng.normal(0, 8, background.shape), 0, 255).astype(np.uint8)
    for t in range(count):
        frame = background.copy()
        for k, colour in enumerate(COLOURS):
            phase = t / 20.0 + 1.7 * k
            cx = int(width * (0.5 + 0.38 * np.sin(phase * (1 + 0.2 * k))))
            cy = int(height * (0.5 + 0.32 * np.cos(phase * 0.8)))
            radius = max(3, int(min(height, width) * (0.07 + 0.02 * k)))
            cv2.circle(frame, (cx, cy), radius, colour, thickness=-1, lineType=cv2.LINE_AA)
        yield frame


def write_clip(path: Path, frames: int, height: int, width: int, fps: float) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    if not writer.isOpened():
        raise SystemExit(f"cannot write {path}")
    for frame in scene_frames(frames, height, width):
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path)
    parser.add_argument("--frames", type=int, default=48)
    parser.add_argument("--size", default="360x640", help="HEIGHTxWIDTH")
    parser.add_argument("--fps", type=float, default=24.0)
    args = parser.parse_args()
    height, width = (int(v) for v in args.size.split("x"))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    write_clip(args.output, args.frames, height, width, args.fps)


if __name__ == "__main__":
    main()
