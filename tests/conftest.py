from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterator

import pytest
import torch

from vppcli.config import preset
from vppcli.model.rovis import VppModel, build_model


@pytest.fixture(scope="session")
def compact_model() -> VppModel:
    torch.manual_seed(0)
    return build_model(preset("compact"))


@pytest.fixture(scope="session")
def tiny_model() -> VppModel:
    torch.manual_seed(0)
    return build_model(preset("tiny"))


@pytest.fixture(scope="session")
def detecting_model() -> VppModel:
    """Random compact weights with the tracker's score thresholds at 0, so that the untrained
    model still produces tracks (a few per frame) for the end-to-end output tests."""
    config = preset("compact")
    config = config.replace(tracker=dataclasses.replace(config.tracker, track_score_threshold=0.0,
                                                        new_score_threshold=0.0))
    torch.manual_seed(0)
    return build_model(config)


@pytest.fixture
def umask_022() -> Iterator[None]:
    """The usual umask for one test, whatever the runner's; the previous one is restored after."""
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


@pytest.fixture(autouse=True)
def _root_logging_restored() -> Iterator[None]:
    """The CLI configures the root logger (`-q`, `-v`); in-process CLI tests must not change the
    level that later tests' `caplog` sees."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    yield
    root.setLevel(level)
    root.handlers[:] = handlers
