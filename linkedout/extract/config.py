"""The settings of one extraction run; `linkedout extract`'s options are generated from them.

The field docstrings are the `--help` (settings named in them are written as their flags, the
way a user meets them); other settings are named in backticks in error reasons.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from linkedout.errors import LinkedOutError, SettingError
from linkedout.extract.defaults import DEFAULT_PROMPT, DEFAULT_VIDEO_MODEL
from linkedout.extract.queries import (
    DEFAULT_QUERY,
    Query,
    check_queries,
    parse_query_flags,
    read_query_file,
)
from linkedout.settings import at_least, check_choices, setting
from linkedout.storage.defaults import COMMIT_EVERY
from linkedout.storage.uri import storage_options_setting

MAX_FRAMES = 768
"""The most frames one video may be sampled with: qwen-vl-utils' own ceiling (FPS_MAX_FRAMES).
Decoded frames are held in memory at the clip's native resolution (768 frames of 1080p are
4.8 GB) before packing; the model's context usually binds first (checked per backbone)."""


def list_of(values: list[str] | None) -> list[str]:
    """A repeatable option's values (none given: empty)."""
    return list(values or [])


def parse_shard(spec: str | None) -> tuple[int, int] | None:
    """`I/N` on the command line -> (I, N)."""
    if spec is None:
        return None
    index, sep, count = spec.partition("/")
    if not sep or not index.strip().isdigit() or not count.strip().isdigit():
        raise SettingError("shard", spec, "write I/N, e.g. 0/4 for the first of 4 shards")
    return int(index), int(count)


@dataclass
class RayOptions:
    """Where and how wide `engine="ray"` runs."""

    address: str | None = setting(None, flag="ray-address")
    """Ray cluster to join: auto (the running one) or HOST:PORT. Default: start one on this
    machine."""
    workers: int = 1
    """Model replicas for --engine ray, one weights load each."""
    gpus_per_worker: float = 0.0
    """GPUs per model replica (--engine ray; 0 runs on CPU)."""
    cpus_per_worker: float = 1.0
    """CPUs per model replica (--engine ray); decoding and packing run in one-CPU tasks of
    their own."""

    def __post_init__(self) -> None:
        at_least(self, "workers", 1, "run at least 1 model replica")
        at_least(self, "gpus_per_worker", 0, "must be 0 or more")
        if self.cpus_per_worker <= 0:
            raise SettingError("cpus_per_worker", self.cpus_per_worker, "must be above 0")


@dataclass
class ExtractConfig:
    """Everything one extraction run needs."""

    out: str = setting(short="-o")
    """Feature dataset to write: path or s3://bucket/path. Re-running resumes it."""
    videos: Path | None = None
    """Folder of videos, searched recursively (mp4, mkv, webm, avi, mov, m4v)."""
    texts: Path | None = None
    """Table of item texts (CSV/TSV/JSONL/Parquet) for a text backbone, instead of videos."""
    model: str = DEFAULT_VIDEO_MODEL
    """Hub id or local checkpoint folder, loaded with from_pretrained. Video LLM families:
    qwen2_vl, qwen2_5_vl, qwen3_vl, qwen3_vl_moe, qwen3_5, qwen3_5_moe (hub or transformers-5
    checkpoint layout); any other transformers image-text-to-text model with a video processor
    through the generic path (its own processor packs the frames; needs torchvision); with
    --texts, any transformers text model."""
    prompt: str = DEFAULT_PROMPT
    """Query given with every video when no --query names one (it is then the query named
    default); {title} is filled from the titles table (lines with {title} are dropped for
    untitled videos)."""
    query: list[str] = setting(default_factory=list, cli_type=list[str] | None, parse=list_of)
    """NAME=TEXT: a named query asked of every video; repeatable, and NAME (a-z, 0-9, _) names
    its stored slots; TEXT may name {title} and other columns of --titles. Several queries
    share one read of the video (see --query-position). On a dataset that holds other
    queries, only the new ones run for the videos stored there."""
    queries: Path | None = None
    """YAML (name: text lines) or JSONL ({"name": ..., "text": ...} per line) file of named
    queries, asked like --query (both may be given)."""
    query_position: Literal["after", "before"] = "after"
    """Where each query sits in the chat turn. after: behind the video, so the video is
    computed once per video and every query continues from its keys and values (the video
    slots are the same for every query: they never see it). before: ahead of the video, so the
    video tokens read the query and title; one full pass per query."""
    titles: Path | None = None
    """Table of item ids (= video file stems) and titles."""
    id_column: str | None = None
    """Id column of the titles/texts table (default: detected)."""
    text_column: str | None = None
    """Text column of the titles/texts table (default: detected, e.g. title)."""
    frames: int = 16
    """Frames sampled uniformly over each whole video (1 to 768, and no more than the model's
    context holds; a clip with fewer frames repeats its own)."""
    max_pixels: int | None = None
    """Pixel budget per frame (the Qwen processors' max_pixels; default: the checkpoint's)."""
    layers: str = "auto:8"
    """Depths to keep: auto:N (N evenly spaced, ending with the last), all, or 4,8,12
    (0 = embeddings)."""
    tokens_per_layer: int = 16
    """T: pooled token slots kept per layer."""
    new_tokens: int = 0
    """Also keep the states of N greedily generated tokens."""
    batch_size: int = 1
    """Items per model forward (with queries after the video: the videos' prefixes in one
    forward, then all their queries in another)."""
    device: str = "auto"
    """auto, cpu, cuda or cuda:N."""
    dtype: Literal["auto", "bf16", "fp16", "fp32", "bfloat16", "float16", "float32"] = "auto"
    """Compute dtype: auto (bf16 on GPU, fp32 on CPU), bf16, fp16, fp32 (or the long names)."""
    store_dtype: Literal["float16", "bfloat16", "float32"] = "float16"
    """Stored tensor dtype: float16, bfloat16 or float32."""
    shard: tuple[int, int] | None = setting(None, cli_type=str | None, parse=parse_shard)
    """I/N: take a deterministic 1/N of the items (those whose id hashes to I modulo N), so N
    processes can fill one dataset."""
    limit: int | None = None
    """Extract at most N items (after the shard)."""
    overwrite: bool = False
    """Re-extract items already stored."""
    retry_failed: bool = False
    """Try again the items stored as failures of the same file (or text) and title. A re-run
    skips them by default, counts them and exits 0 (the same bytes would fail the same way),
    so a nightly job does not break on one bad upload; a changed file is always retried."""
    commit_every: int = COMMIT_EVERY
    """Rows per commit: a kill loses at most this much work; larger makes fewer fragments."""
    decode_threads: int = 2
    """Threads decoding and packing videos ahead of the model (local engine)."""
    engine: Literal["local", "ray"] = "local"
    """local: this process. ray: Ray Data over a cluster (decoding in CPU tasks, one model per
    worker); needs `pip install 'linkedout[distributed]'`."""
    backend: Literal["transformers", "vllm"] = "transformers"
    """What runs the Video LLM: transformers (the reference) or vllm (a vLLM engine batching
    many videos at once; same rows). vllm needs `pip install 'linkedout[vllm]'` on GPUs, or
    `make vllm-env` on CPUs."""
    ray: RayOptions = field(default_factory=RayOptions)
    """Cluster, workers and GPUs of the ray engine."""
    storage_options: dict[str, str] = storage_options_setting()

    def named_queries(self) -> list[Query]:
        """The queries of this run, in order: --query, then --queries; else --prompt, named
        default."""
        named = parse_query_flags(self.query)
        if self.queries is not None:
            named = check_queries(named + read_query_file(self.queries), "the queries")
        if not named:
            return [Query(DEFAULT_QUERY, self.prompt)]
        if self.prompt != DEFAULT_PROMPT:
            raise LinkedOutError(
                "--prompt is the one query of a run without --query or --queries: name it as "
                "a query instead (--query default='...')"
            )
        return named

    def __post_init__(self) -> None:
        check_choices(self)
        if (self.videos is None) == (self.texts is None):
            raise LinkedOutError("pass exactly one of --videos DIR or --texts FILE")
        at_least(self, "frames", 1, "sample at least 1 frame per video")
        if self.frames > MAX_FRAMES:
            raise SettingError(
                "frames",
                self.frames,
                f"at most {MAX_FRAMES} frames per video (each is decoded into memory at the "
                "clip's resolution, and packed into the model's context): lower `frames`",
            )
        at_least(self, "batch_size", 1, "must be at least 1")
        at_least(self, "new_tokens", 0, "must be 0 or more")
        at_least(self, "limit", 1, "extract at least 1 item (leave `limit` out for all)")
        if self.videos is not None and not self.prompt.strip():
            raise SettingError(
                "prompt", self.prompt, "is empty: the model needs a question about each video"
            )
        self.named_queries()  # refuses bad queries before any weights load
        if self.texts is not None and (self.query or self.queries):
            raise LinkedOutError(
                "--query and --queries ask questions of videos; a text backbone (--texts) reads "
                "each item's text alone: drop them"
            )
        at_least(self, "commit_every", 1, "commit at least 1 row at a time")
        at_least(self, "decode_threads", 1, "decode with at least 1 thread")
        if self.shard is not None:
            index, count = self.shard
            if count < 1 or not 0 <= index < count:
                raise SettingError("shard", f"{index}/{count}", "need 0 <= I < N")
