from __future__ import annotations

from pathlib import Path

import pytest

from tests.extract.tiny_qwen import FAMILIES, build_tiny_qwen


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """Tiny random-weight checkpoints of each supported family, saved like a user's local copy."""
    root = tmp_path_factory.mktemp("tiny_qwen")
    return {family: build_tiny_qwen(family, root / family) for family in FAMILIES}
