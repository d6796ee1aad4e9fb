"""`make demo`: the pipeline end to end on real data, as far as it is built.

1. MicroLens-50K titles -> real all-MiniLM-L6-v2 (every layer) -> Lance, via `linkedout extract`.
2. `linkedout train` (quick settings) on the MicroLens interactions, `evaluate`, and
   `recommend --explain` for one user.
3. The repository's sample clips (examples/clips) -> the default Video LLM -> Lance, when that
   model is available (cached, or the hub is reachable; LINKEDOUT_VIDEO_MODEL may name a local
   checkpoint folder); otherwise one line says how to provide it.
4. `linkedout export` of the title features with its dataset card.

MicroLens-50K comes from $LINKEDOUT_DATA, ../shared/data/microlens-50k, or is downloaded once
from the official site into ~/.cache/linkedout (see linkedout.datasets).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

from linkedout.extract.defaults import DEFAULT_VIDEO_MODEL

REPO = Path(__file__).resolve().parents[1]
CLIPS = REPO / "examples" / "clips"
VIDEO_MODEL = os.environ.get("LINKEDOUT_VIDEO_MODEL", DEFAULT_VIDEO_MODEL)
OUT = REPO / "out" / "demo"
CLI = [sys.executable, "-m", "linkedout.cli"]


def hub_reachable() -> bool:
    try:
        socket.create_connection(("huggingface.co", 443), timeout=3).close()
        return True
    except OSError:
        return False


def run(*args: str) -> None:
    print(f"\n$ linkedout {' '.join(args)}", flush=True)
    subprocess.run([*CLI, *args], check=True)


def video_model_available() -> bool:
    from linkedout.errors import LinkedOutError
    from linkedout.extract.backbones import inspect_model

    try:
        inspect_model(VIDEO_MODEL, "video-llm")
    except LinkedOutError as e:
        print(
            f"\nskipping video extraction: {VIDEO_MODEL} is not available here ({e}); set "
            "LINKEDOUT_VIDEO_MODEL to a local checkpoint folder, or run `linkedout extract "
            "--videos examples/clips --model PATH`"
        )
        return False
    return True


def main() -> None:
    # Without a network, huggingface_hub would retry for half a minute before failing: ask only
    # the local cache then. (Read at import: set before anything imports transformers.)
    if "HF_HUB_OFFLINE" not in os.environ and not hub_reachable():
        os.environ["HF_HUB_OFFLINE"] = "1"
    from linkedout.datasets import microlens_50k
    from linkedout.errors import LinkedOutError

    try:
        data = microlens_50k()
    except LinkedOutError as e:
        print(e, file=sys.stderr)
        sys.exit(2)
    titles = data / "MicroLens-50k_titles.csv"
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
        "3",
        "--batch-size",
        "64",
        "--out",
        str(OUT / "titles.lance"),
    )
    run("info", str(OUT / "titles.lance"), "--failures", "3")
    pairs = data / "MicroLens-50k_pairs.tsv"
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
    if video_model_available():
        run(
            "extract",
            "--videos",
            str(CLIPS),
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
