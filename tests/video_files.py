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


def damaged_faststart_copy(source: Path, target: Path, damage: int = 30_000, seed: int = 0) -> Path:
    """`source` remuxed with its index at the front (faststart), then `damage` random bytes written
    over the middle of the file: the container opens, decoding breaks part-way through."""
    import subprocess

    import imageio_ffmpeg

    moved = target.with_name(f".{target.name}.faststart.mp4")
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-i", str(source),
                    "-c", "copy", "-movflags", "+faststart", str(moved)], check=True)
    data = bytearray(moved.read_bytes())
    moved.unlink()
    middle = len(data) // 2
    data[middle : middle + damage] = np.random.default_rng(seed).integers(0, 256, damage, dtype=np.uint8).tobytes()
    target.write_bytes(bytes(data))
    return target


def noisy_striped_clip(count: int, height: int = 96, width: int = 128, seed: int = 1) -> list[np.ndarray]:
    """`striped_clip` with noise in the dark part: frames that do not compress to nothing."""
    rng = np.random.default_rng(seed)
    return [np.where(frame > 128, frame, rng.integers(0, 60, frame.shape, dtype=np.uint8)).astype(np.uint8)
            for frame in striped_clip(count, height, width)]
