"""Per-frame COCO-style instances: every processed frame is an image, every instance an
annotation (with its track id), masks as compressed RLE."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import IO, Any

from vppcli.errors import OutputError
from vppcli.outputs.atomic import AtomicFile
from vppcli.outputs.base import FrameRecord, VideoMeta

TIMESTAMP_DECIMALS = 6


def image_file_name(video_name: str, frame_index: int) -> str:
    """For a video's frame, the name it would have if the video were extracted to JPEGs,
    "<video>/000123.jpg" (frames read from image files keep their own names, `FrameRecord.file`)."""
    return f"{video_name}/{frame_index:06d}.jpg"


class _JsonSpool:
    """JSON values appended to an anonymous temporary file, copied out as a comma-separated list."""

    def __init__(self, directory: Path) -> None:
        try:
            self._file: IO[str] = tempfile.TemporaryFile("w+", encoding="utf-8", dir=directory)
        except OSError as error:
            raise OutputError(f"cannot create a temporary file in {directory}: {error.strerror or error}") from error
        self.count = 0

    def append(self, value: dict[str, Any]) -> None:
        self._file.write(("," if self.count else "") + "\n" + json.dumps(value, separators=(",", ":")))
        self.count += 1

    def copy_to(self, destination: IO[str]) -> None:
        self._file.seek(0)
        shutil.copyfileobj(self._file, destination)

    def close(self) -> None:
        self._file.close()


class CocoWriter:
    """Writes `coco.json`. Images and annotations are spooled to temporary files as frames arrive
    (memory does not grow with the video) and assembled into one JSON object at `finish()`.

    Image ids count processed frames from 1, annotation ids count instances from 1; `frame_index`
    is the frame's index in the source video.
    """

    def __init__(self, meta: VideoMeta, path: Path) -> None:
        self._meta = meta
        self._path = path
        self._file = AtomicFile(path)
        # Next to the output, not in /tmp: a long video's annotations can be large.
        self._images = _JsonSpool(path.parent)
        try:
            self._annotations = _JsonSpool(path.parent)
        except OutputError:
            self._images.close()
            raise

    def write_frame(self, record: FrameRecord) -> None:
        meta = self._meta
        image_id = self._images.count + 1
        try:
            self._images.append({
                "id": image_id,
                "file_name": record.file or image_file_name(meta.name, record.index),
                "height": meta.height,
                "width": meta.width,
                "frame_index": record.index,
                "timestamp": round(record.timestamp, TIMESTAMP_DECIMALS),
                "video_id": meta.video_id,
            })
            for instance in record.instance_records:
                self._annotations.append({
                    "id": self._annotations.count + 1,
                    "image_id": image_id,
                    "category_id": meta.category_ids[instance.label],
                    "segmentation": instance.rle,
                    "bbox": instance.bbox_xywh,
                    "area": instance.area,
                    "score": instance.score,
                    "track_id": instance.track_id,
                    "iscrowd": 0,
                })
        except OSError as error:
            raise OutputError(f"cannot spool {self._path}: {error.strerror or error}") from error

    def finish(self) -> None:
        meta = self._meta
        info = {"description": "vppcli predictions", "video": meta.name, "source": meta.source, "fps": meta.fps}
        categories = [{"id": cid, "name": name} for cid, name in zip(meta.category_ids, meta.class_names)]
        with self._file.filling() as handle:
            handle.write('{"info":' + json.dumps(info, separators=(",", ":")) + ',\n"images":[')
            self._images.copy_to(handle)
            handle.write('\n],\n"annotations":[')
            self._annotations.copy_to(handle)
            handle.write('\n],\n"categories":' + json.dumps(categories) + "}\n")
        self._close_spools()

    def commit(self) -> list[Path]:
        return [self._file.commit()]

    def abort(self) -> None:
        self._close_spools()
        self._file.discard()

    def _close_spools(self) -> None:
        self._images.close()
        self._annotations.close()
