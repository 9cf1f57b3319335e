from __future__ import annotations

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
