"""Folders of sample clips for tests: the shared ones (skipped where `../shared` is absent) and
the repository's two example clips. Feature-row factories live in `linkedout.testing.factories`."""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path

from tests.conftest import shared_data


def clips_folder(folder: Path, names: Iterable[str]) -> Path:
    """`folder` with copies of these shared sample clips (the test skips where they are absent)."""
    for name in names:
        shutil.copy(shared_data("videos", name), folder / name)
    return folder


EXAMPLE_CLIPS = Path(__file__).resolve().parents[1] / "examples" / "clips"


def two_example_clips(folder: Path) -> Path:
    """`folder` with the repository's two smallest example clips (always present: they ship
    with the project), as `avi_clip.avi` and `bikes.mp4`."""
    shutil.copy(EXAMPLE_CLIPS / "tests_data_test.avi", folder / "avi_clip.avi")
    shutil.copy(EXAMPLE_CLIPS / "bikes.mp4", folder / "bikes.mp4")
    return folder
