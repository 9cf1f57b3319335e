"""Per-frame id masks as PNG files (DAVIS style): pixel value = track id, 0 = background.

Files are 8-bit palette PNGs whose colours are the overlay's (`colors.track_color`). Track ids
above 255 do not fit in 8 bits: once one appears, the video's masks become 16-bit grayscale
PNGs (pixel value still = track id, no palette), and the frames already written are converted
at `finish()`, so all masks of one video share one format.

The encoder is a few lines of zlib (OpenCV cannot write palette PNGs and Pillow is not a
dependency); `read_png` decodes exactly what `encode_png` writes.
"""

from __future__ import annotations

import logging
import struct
import zlib
from pathlib import Path

import numpy as np

from vppcli.errors import OutputError
from vppcli.outputs.atomic import AtomicDirectory
from vppcli.outputs.base import FrameRecord
from vppcli.outputs.colors import palette
from vppcli.results import FrameInstances

logger = logging.getLogger(__name__)

MAX_PALETTE_ID = 255
MAX_PNG_ID = 65535  # 16-bit PNGs are the widest grayscale PNGs
_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_INDEXED, _GRAY = 3, 0  # PNG colour types
_COMPRESSION_LEVEL = 3  # mask PNGs shrink ~100x at any level; higher levels cost 3x the time


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def encode_png(ids: np.ndarray) -> bytes:
    """PNG bytes of an id map: uint8 -> 8-bit with the track palette, uint16 -> 16-bit grayscale.

    Args:
        ids: [H, W] uint8 or uint16.
    """
    height, width = ids.shape
    if ids.dtype == np.uint8:
        header = struct.pack(">IIBBBBB", width, height, 8, _INDEXED, 0, 0, 0)
        rows = ids
        extra = [_chunk(b"PLTE", palette(MAX_PALETTE_ID + 1).tobytes())]
    elif ids.dtype == np.uint16:
        header = struct.pack(">IIBBBBB", width, height, 16, _GRAY, 0, 0, 0)
        rows = ids.astype(">u2").view(np.uint8).reshape(height, 2 * width)
        extra = []
    else:
        raise ValueError(f"id maps are uint8 or uint16, got {ids.dtype}")
    scanlines = np.zeros((height, rows.shape[1] + 1), dtype=np.uint8)  # leading 0: no row filter
    scanlines[:, 1:] = rows
    return b"".join([
        _SIGNATURE,
        _chunk(b"IHDR", header),
        *extra,
        _chunk(b"IDAT", zlib.compress(scanlines.tobytes(), _COMPRESSION_LEVEL)),
        _chunk(b"IEND", b""),
    ])


def read_png(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """Decode a PNG written by `encode_png`.

    Returns:
        ids [H, W] (uint8 or uint16) and the palette [256, 3] uint8 (None for 16-bit files).
    """
    data = path.read_bytes()
    if not data.startswith(_SIGNATURE):
        raise ValueError(f"{path} is not a PNG")
    position, idat, plte, header = len(_SIGNATURE), [], None, b""
    while position < len(data):
        (length,) = struct.unpack(">I", data[position : position + 4])
        kind = data[position + 4 : position + 8]
        body = data[position + 8 : position + 8 + length]
        position += 12 + length
        if kind == b"IHDR":
            header = body
        elif kind == b"PLTE":
            plte = np.frombuffer(body, dtype=np.uint8).reshape(-1, 3)
        elif kind == b"IDAT":
            idat.append(body)
    width, height, bit_depth = struct.unpack(">IIB", header[:9])
    bytes_per_pixel = bit_depth // 8
    scanlines = np.frombuffer(zlib.decompress(b"".join(idat)), dtype=np.uint8).reshape(height, -1)
    if scanlines[:, 0].any():
        raise ValueError(f"{path} uses PNG row filters; only unfiltered files are read")
    rows = np.ascontiguousarray(scanlines[:, 1:])
    ids = rows if bytes_per_pixel == 1 else rows.view(">u2").astype(np.uint16).reshape(height, width)
    return ids, plte


def id_map(instances: FrameInstances, dtype: type[np.unsignedinteger]) -> np.ndarray:
    """[H, W] track ids, 0 where no mask; where masks overlap the higher-scored instance wins."""
    instances = instances.cpu()
    ids = np.zeros(instances.image_size, dtype=dtype)
    masks = instances.masks.numpy()
    track_ids = instances.track_ids.tolist()
    for index in np.argsort(instances.scores.numpy(), kind="stable"):
        np.copyto(ids, track_ids[index], where=masks[index])
    return ids


class PngMaskWriter:
    """Writes `masks/<source frame index, 6 digits>.png`, one file per processed frame, into a
    hidden temporary directory that `commit()` renames into place."""

    def __init__(self, directory: Path) -> None:
        self._directory = AtomicDirectory(directory)
        self._sixteen_bit = False

    def write_frame(self, record: FrameRecord) -> None:
        instances = record.instances
        largest = int(instances.track_ids.max()) if len(instances) else 0
        if largest > MAX_PNG_ID:
            raise OutputError(f"track id {largest} at frame {record.index} does not fit a 16-bit PNG mask "
                              f"(ids up to {MAX_PNG_ID}); use the ytvis, coco or jsonl format for this video")
        if not self._sixteen_bit and largest > MAX_PALETTE_ID:
            self._sixteen_bit = True
            logger.info("track id above %d at frame %d: masks become 16-bit PNGs", MAX_PALETTE_ID, record.index)
        ids = id_map(instances, np.uint16 if self._sixteen_bit else np.uint8)
        self._write(self._directory.temporary / f"{record.index:06d}.png", ids)

    def finish(self) -> None:
        self._directory.finish()
        if not self._sixteen_bit:
            return
        for path in sorted(self._directory.temporary.glob("*.png")):
            try:
                ids, plte = read_png(path)
            except OSError as error:
                raise OutputError(f"cannot rewrite {self._directory.final / path.name} as 16-bit: "
                                  f"{error.strerror or error}") from error
            if plte is not None:
                self._write(path, ids.astype(np.uint16))

    def commit(self) -> list[Path]:
        return [self._directory.commit()]

    def abort(self) -> None:
        self._directory.discard()

    def _write(self, path: Path, ids: np.ndarray) -> None:
        try:
            path.write_bytes(encode_png(ids))
        except OSError as error:
            raise OutputError(f"cannot write {self._directory.final / path.name}: {error.strerror or error}") from error
