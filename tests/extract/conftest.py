from __future__ import annotations

from pathlib import Path

import pytest

from linkedout.testing.tiny_qwen import FAMILIES, build_tiny_qwen


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """Tiny random-weight checkpoints of each supported family, saved like a user's local copy
    of the Hub repo."""
    root = tmp_path_factory.mktemp("tiny_qwen")
    return {family: build_tiny_qwen(family, root / family) for family in FAMILIES}


@pytest.fixture(scope="session")
def saved_checkpoints(tmp_path_factory) -> dict[str, Path]:
    """The same checkpoints as transformers 5's `save_pretrained` lays them out."""
    root = tmp_path_factory.mktemp("tiny_qwen_saved")
    return {
        family: build_tiny_qwen(family, root / family, layout="transformers5")
        for family in FAMILIES
    }
