"""`make demo`: the pipeline end to end on real data, as far as it is built.

1. MicroLens-50K titles -> real all-MiniLM-L6-v2 (every layer) -> Lance, via `linkedout extract`.
2. `linkedout train` (quick settings) on the MicroLens interactions, `evaluate`, and
   `recommend --explain` for one user.
3. The sample clips -> the default Video LLM -> Lance, when that model is available (a local
   folder in LINKEDOUT_VIDEO_MODEL, or the hub); otherwise says how to provide it.
4. `linkedout export` of the title features with its dataset card.

Data: MicroLens from $LINKEDOUT_DATA or ../shared/data/microlens-50k; clips from
$LINKEDOUT_VIDEOS or ../shared/data/videos.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
DATA = Path(os.environ.get("LINKEDOUT_DATA", SHARED / "microlens-50k"))
VIDEOS = Path(os.environ.get("LINKEDOUT_VIDEOS", SHARED / "videos"))
VIDEO_MODEL = os.environ.get("LINKEDOUT_VIDEO_MODEL", "Qwen/Qwen2.5-VL-3B-Instruct")
OUT = REPO / "out" / "demo"
CLI = [sys.executable, "-m", "linkedout.cli"]
# Where a machine has no network, ask the hub once instead of retrying for half a minute; set
# HF_HUB_OFFLINE=0 to let the demo download the default Video LLM. (Read by huggingface_hub at
# import, so it is set before anything imports transformers.)
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def run(*args: str) -> None:
    print(f"\n$ linkedout {' '.join(args)}", flush=True)
    subprocess.run([*CLI, *args], check=True)


def video_model_available() -> bool:
    from linkedout.errors import LinkedOutError
    from linkedout.extract.backbones import inspect_model

    try:
        inspect_model(VIDEO_MODEL, "video-llm")
    except LinkedOutError as e:
        print(f"\nskipping video extraction: {e}")
        return False
    return True


def main() -> None:
    titles = DATA / "MicroLens-50k_titles.csv"
    if not titles.exists():
        sys.exit(
            f"MicroLens-50K is not at {DATA}: download MicroLens-50k_titles.csv and "
            "MicroLens-50k_pairs.tsv from the MicroLens project page into a folder and set "
            "LINKEDOUT_DATA to it"
        )
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    run(
        "extract",
        "--texts",
        str(titles),
        "--model",
        "sentence-transformers/all-MiniLM-L6-v2",
        "--layers",
        "all",
        "--tokens-per-layer",
        "4",
        "--batch-size",
        "64",
        "--out",
        str(OUT / "titles.lance"),
    )
    run("info", str(OUT / "titles.lance"), "--failures", "3")
    pairs = DATA / "MicroLens-50k_pairs.tsv"
    run(
        "train",
        "--features",
        str(OUT / "titles.lance"),
        "--interactions",
        str(pairs),
        "--out",
        str(OUT / "run"),
        "--epochs",
        "2",
        "--batch-size",
        "256",
        "--lr",
        "2e-3",
    )
    run("evaluate", str(OUT / "run"))
    first_user = pairs.read_text().split("\t", 1)[0]
    run("recommend", str(OUT / "run"), "--user", first_user, "--k", "5", "--explain")
    if VIDEOS.is_dir() and video_model_available():
        run(
            "extract",
            "--videos",
            str(VIDEOS),
            "--model",
            VIDEO_MODEL,
            "--frames",
            "8",
            "--max-pixels",
            str(448 * 448),
            "--out",
            str(OUT / "videos.lance"),
        )
        run("info", str(OUT / "videos.lance"))
    run("export", str(OUT / "titles.lance"), str(OUT / "shared" / "titles.lance"))
    print(f"\ndataset card: {OUT / 'shared' / 'titles.lance' / 'README.md'}")


if __name__ == "__main__":
    main()
