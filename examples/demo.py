"""`make demo`, for as much of the pipeline as exists: the feature store.

The extract stage (issue #3) is not built yet, so the tensors written here are random
placeholders with the shape Qwen2.5-VL-3B would give ([8 layers, 16 tokens, 2048]); everything
around them is real: the sample clips' paths and sha256 hashes, batched idempotent commits, a
re-run that skips them, `linkedout info`, and an export with its dataset card.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch

from linkedout.storage import FeatureRow, FeatureStore, Manifest, sha256_file

REPO = Path(__file__).resolve().parents[1]
VIDEOS = Path(os.environ.get("LINKEDOUT_VIDEOS", REPO.parent / "shared" / "data" / "videos"))
OUT = REPO / "out" / "demo"


def main() -> None:
    clips = sorted(p for p in VIDEOS.glob("*") if p.suffix in {".mp4", ".mkv", ".webm", ".avi"})
    if not clips:
        sys.exit(f"no sample clips under {VIDEOS}: set LINKEDOUT_VIDEOS to a folder of videos")
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    manifest = Manifest(
        backbone="placeholder (random tensors until `linkedout extract` lands)",
        backbone_kind="video-llm",
        layers=(4, 8, 12, 16, 20, 24, 28, 36),
        tokens_per_layer=16,
        hidden_size=2048,
        frames_per_video=16,
    )
    store = FeatureStore.open_or_create(OUT / "features.lance", manifest)
    for attempt in ("first run", "re-run (nothing to do)"):
        with store.writer(batch_size=4) as writer:
            for clip in clips:
                tokens = torch.randn(manifest.shape).to(torch.float16)
                writer.add(FeatureRow(clip.stem, tokens, sha256_file(clip), source=str(clip)))
        s = writer.stats
        print(f"{attempt}: {s.written} written, {s.skipped} skipped, {s.commits} commit(s)")
    cli = [sys.executable, "-m", "linkedout.cli"]
    subprocess.run([*cli, "info", str(OUT / "features.lance")], check=True)
    subprocess.run(
        [*cli, "export", str(OUT / "features.lance"), str(OUT / "shared.lance")], check=True
    )
    ids = store.ids()[:2]
    print(f"take({ids}, layers=[8]) -> {tuple(store.take(ids, layers=[8]).shape)}")


if __name__ == "__main__":
    main()
