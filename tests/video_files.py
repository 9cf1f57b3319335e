"""Writing small test videos and frame directories (OpenCV's mp4v, no network, no ffmpeg binary)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


def write_video(path: Path, frames: list[np.ndarray], fps: float = 25.0) -> Path:
    """Encode RGB frames as mp4v (moov atom at the end, like most recorders write it)."""
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def write_frames(directory: Path, frames: list[np.ndarray], suffix: str = ".jpg") -> list[Path]:
    """YouTube-VIS style frame directory: 00000.jpg, 00005.jpg, ... (every 5th frame number)."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, frame in enumerate(frames):
        path = directory / f"{5 * index:05d}{suffix}"
        cv2.imwrite(str(path), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
        paths.append(path)
    return paths


def striped_clip(count: int, height: int = 48, width: int = 64) -> list[np.ndarray]:
    """Frame t has its first 4 + t columns bright: the frame index can be read back after lossy coding."""
    frames = []
    for t in range(count):
        frame = np.full((height, width, 3), 20, dtype=np.uint8)
        frame[:, : min(width, 4 + t)] = 230
        frames.append(frame)
    return frames


def bright_columns(image: np.ndarray) -> int:
    """Inverse of `striped_clip`: how many leading columns are bright."""
    return int((image[image.shape[0] // 2, :, 0] > 128).sum())
