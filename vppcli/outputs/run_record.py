"""Which outputs the last run wrote into a video directory, so that a rerun replaces that run whole.

A rerun into the same directory with other formats must not leave the earlier run's other files
beside the new ones. The hidden `.vpp-run.json` lists what the last run committed; after the
next run commits, the listed outputs it did not write again are removed. Nothing that file does
not list is ever removed: vppcli only deletes what it wrote itself, and warns about a file that
has an output's name but is not listed (e.g. from a vppcli before the record existed).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Collection, Sequence
from pathlib import Path

from vppcli.errors import OutputError
from vppcli.outputs.atomic import AtomicFile, remove_quietly

logger = logging.getLogger(__name__)

RECORD_NAME = ".vpp-run.json"


def previous_outputs(video_dir: Path) -> list[str]:
    """Names the last run recorded in `video_dir` (none when there is no readable record)."""
    try:
        names = json.loads((video_dir / RECORD_NAME).read_text(encoding="utf-8"))["outputs"]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    # Plain names only: a hand-edited record must not point removal outside the directory.
    return [n for n in names if isinstance(n, str) and n not in ("", ".", "..") and "/" not in n and "\\" not in n]


def replace_run(video_dir: Path, written: Sequence[Path], output_names: Collection[str]) -> None:
    """After a commit: remove the previous run's outputs not written again, record the new ones.

    Called only once every new output is in place, so a failed run leaves the previous one whole.
    `output_names`: every name an output can have, to warn about unrecorded ones left in place.
    """
    names = sorted({path.name for path in written if path.parent == video_dir})
    previous = set(previous_outputs(video_dir))
    for stale in sorted(previous - set(names)):
        logger.info("removing %s of the previous run in %s", stale, video_dir)
        remove_quietly(video_dir / stale)
    foreign = sorted(n for n in set(output_names) - previous - set(names) if os.path.lexists(video_dir / n))
    if foreign:
        logger.warning("%s: left %s in place, not from this run (vppcli has no record of writing it)",
                       video_dir, ", ".join(foreign))
    try:
        with AtomicFile(video_dir / RECORD_NAME) as handle:
            json.dump({"outputs": names}, handle)
            handle.write("\n")
    except OutputError as error:  # the outputs are in place; only the next rerun's clean-up suffers
        logger.warning("%s; a rerun into %s will not remove this run's outputs", error, video_dir)
