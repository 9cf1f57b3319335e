"""One JSON object per processed frame on a text stream (default stdout), for piping.

`{"video", "frame" (source index), "timestamp" (s), "file" (frames read from image files only,
as COCO's `file_name`), "instances": [{"id", "class", "category_id", "score", "bbox" [x, y, w, h],
"area", "rle" {"size", "counts"}}]}`; each line is flushed at once.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TextIO

from vppcli.errors import OutputError
from vppcli.outputs.base import FrameRecord, VideoMeta
from vppcli.outputs.coco import TIMESTAMP_DECIMALS


class JsonlWriter:
    """Writes each frame as one line to `stream`; writes nothing else there, creates no file."""

    def __init__(self, meta: VideoMeta, stream: TextIO) -> None:
        self._meta = meta
        self._stream = stream
        self._stopped = False

    def write_frame(self, record: FrameRecord) -> None:
        if self._stopped:
            raise ValueError("write_frame after finish() or abort()")
        meta = self._meta
        line: dict[str, object] = {
            "video": meta.name,
            "frame": record.index,
            "timestamp": round(record.timestamp, TIMESTAMP_DECIMALS),
            **({"file": record.file} if record.file is not None else {}),
            "instances": [
                {
                    "id": instance.track_id,
                    "class": meta.class_names[instance.label],
                    "category_id": meta.category_ids[instance.label],
                    "score": instance.score,
                    "bbox": instance.bbox_xywh,
                    "area": instance.area,
                    "rle": instance.rle,
                }
                for instance in record.instance_records
            ],
        }
        try:
            self._stream.write(json.dumps(line, separators=(",", ":")) + "\n")
            self._stream.flush()
        except BrokenPipeError:
            raise  # the reader went away (`vpp segment ... | head`): the caller decides what that means
        except OSError as error:
            raise OutputError(f"cannot write JSON lines: {error.strerror or error}") from error

    def finish(self) -> None:
        self._stopped = True

    def commit(self) -> list[Path]:
        return []  # every line went out as its frame came

    def abort(self) -> None:
        self._stopped = True
