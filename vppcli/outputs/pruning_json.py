"""`pruning.jsonl`: every frame's keep masks, one JSON object per line, for analysis.

    {"video": "clip", "frame": 12, "timestamp": 0.5, "frame_size": [H0, W0], "grid": [H, W],
     "input_size": [Hi, Wi], "first_frame": false, "tokens_per_block": [2040, 1428, ...],
     "stages": [{"name": "map", "blocks": [1, 2], "tokens": 1428, "keep": 0.7, "bits": "..."}, ...]}

`grid` is the patch grid of the padded network input (stride 16); the frame, resized to
`input_size`, fills its top-left corner (padding is bottom/right). `bits` is the stage's keep
mask, row-major over the grid, packed 8 patches a byte with the first patch in the lowest bit
(`numpy.packbits(mask, bitorder="little")`), in base64; `decode_bits` reverses it. Every block
of a stage processed exactly the kept patches: `tokens` (= `tokens_per_block[b]` for b in
`blocks`) counts them, `keep` = tokens / (H * W). `first_frame`: no temporal prior, the Map-SM
did not run and its stage is dense.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np

from vppcli.errors import OutputError
from vppcli.outputs.atomic import AtomicFile
from vppcli.outputs.base import FrameRecord, VideoMeta
from vppcli.outputs.coco import TIMESTAMP_DECIMALS
from vppcli.outputs.pruning import frame_pruning

KEEP_DECIMALS = 4


def encode_bits(mask: np.ndarray) -> str:
    """[H, W] bool -> base64 of its row-major bits, first patch in the lowest bit of byte 0."""
    return base64.b64encode(np.packbits(mask.reshape(-1), bitorder="little").tobytes()).decode("ascii")


def decode_bits(bits: str, grid: tuple[int, int]) -> np.ndarray:
    """The inverse of `encode_bits`: [H, W] bool."""
    packed = np.frombuffer(base64.b64decode(bits), dtype=np.uint8)
    return np.unpackbits(packed, count=grid[0] * grid[1], bitorder="little").reshape(grid).astype(bool)


def pruning_line(meta: VideoMeta, record: FrameRecord) -> dict[str, object]:
    """The JSON object of one frame (see the module docstring)."""
    pruning = frame_pruning(record)
    stats = record.instances.stats
    assert stats is not None  # frame_pruning checked
    num_tokens = pruning.grid[0] * pruning.grid[1]
    stages = []
    for stage in pruning.stages:
        mask = pruning.stage_mask(stage).numpy()
        tokens = int(mask.sum())
        stages.append({"name": stage.name, "blocks": list(stage.blocks), "tokens": tokens,
                       "keep": round(tokens / num_tokens, KEEP_DECIMALS), "bits": encode_bits(mask)})
    return {
        "video": meta.name,
        "frame": record.index,
        "timestamp": round(record.timestamp, TIMESTAMP_DECIMALS),
        "frame_size": [meta.height, meta.width],
        "grid": list(pruning.grid),
        "input_size": list(pruning.input_size),
        "first_frame": pruning.first_frame,
        "tokens_per_block": list(stats.tokens_per_block),
        "stages": stages,
    }


class PruningJsonWriter:
    """Writes `pruning.jsonl` line by line under its temporary name (nothing is kept per frame)."""

    def __init__(self, meta: VideoMeta, path: Path) -> None:
        self._meta = meta
        self._file = AtomicFile(path)
        self._handle = self._file.open()

    def write_frame(self, record: FrameRecord) -> None:
        line = json.dumps(pruning_line(self._meta, record), separators=(",", ":"))
        try:
            self._handle.write(line + "\n")
        except OSError as error:
            raise OutputError(f"cannot write {self._file.final}: {error.strerror or error}") from error

    def finish(self) -> None:
        self._file.finish()

    def commit(self) -> list[Path]:
        return [self._file.commit()]

    def abort(self) -> None:
        self._file.discard()
