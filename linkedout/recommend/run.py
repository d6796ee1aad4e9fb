"""The run directory: what `train` writes and `evaluate` and `recommend` read, in one place.

Run directory:
    config.json            the resolved TrainConfig, the feature manifest, the split report
                           (`RunConfig`)
    checkpoints/best.ckpt  the best epoch by validation NDCG@10
    checkpoints/last.ckpt  the latest epoch, for resuming a run that was stopped
    interrupted.json       a run Ctrl-C finished early from its best checkpoint so far: the
                           same `train` command continues it (gone once it has)
    train.lock             while `train` runs: who trains the run (`RunLock`)
    split/                 the leave-one-out split as TSV files (see split_files.py): any other
                           library can be trained and ranked on exactly this split
    catalog.lance          per-depth item vectors `e` of the best model, for ranking and serving
                           (layout in catalog_dataset.py)
    catalog-location.json  once `catalog publish` copied the catalog to an object store: its
                           URI, read from then on instead of catalog.lance (catalog_location.py)
    metrics.json           valid/test metrics, popularity baseline, cold-start slice
                           (`EvalReport`)
    epochs.json            per epoch: train loss, validation metrics, train and validation seconds
    gates.png              per-layer gate weights, overall and for a sample of users
    logs/                  CSV (and TensorBoard when installed) training logs

config.json, both checkpoints and catalog.lance carry one run id (a uuid4): a file copied from
another run is refused instead of ranked. Runs written before the run id carry none anywhere.
Checkpoints are read with `weights_only=True` only: one that holds anything but tensors and
plain values is refused, never unpickled.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from linkedout.errors import LinkedOutError, first_line
from linkedout.memory import MemoryBudget
from linkedout.recommend.catalog import Catalog, open_catalog
from linkedout.recommend.catalog_dataset import CatalogDataset, read_run_id
from linkedout.recommend.catalog_location import CatalogLocation, read_location
from linkedout.recommend.checkpoints import checkpoint_run_id, read_checkpoint
from linkedout.recommend.model import LinkedOut
from linkedout.recommend.run_lock import RunLock
from linkedout.recommend.split_files import read_split, write_split

if TYPE_CHECKING:
    from linkedout.recommend.module import LinkedOutModule
    from linkedout.recommend.split import SequenceSplit

RESUME_HINT = "re-run the same `linkedout train` command to resume it"


@dataclass
class RunConfig:
    """config.json: how the run was trained and on what."""

    train: dict
    """The TrainConfig, as JSON values."""
    layers: list[int]
    """The stored depths the model reads."""
    manifest: dict
    features_version: int
    split: dict
    """The split report."""
    softmax: str
    """full or sampled."""
    run_id: str | None = None
    """Stamped on the checkpoints and catalog.lance too (None: a run from before run ids)."""
    queries: list[str] = field(default_factory=list)
    """The queries of a multi-query dataset the model reads, each with every depth (none: the
    dataset's first, the only one of most datasets)."""
    slots: list[int] | None = None
    """[start, stop] of the T slots the model reads (None: all)."""

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> RunConfig:
        # run_id and queries are absent from runs trained before them; the rest is required.
        optional = {"run_id", "queries", "slots"}
        names = [f.name for f in fields(cls) if f.name not in optional or f.name in data]
        return cls(**{name: data[name] for name in names})

    @property
    def experts(self) -> list[int | str]:
        """What each expert of the model reads, as explanations name it: its depth, or
        `query:depth` when the run reads several queries."""
        if not self.queries:
            return list(self.layers)
        return [f"{q}:{x}" for q in self.queries for x in self.layers]


@dataclass
class SplitMetrics:
    """The model's and popularity's metrics on one split (`RankingMetrics.compute()`)."""

    model: dict[str, float]
    popularity: dict[str, float]

    def to_json(self) -> dict:
        return {"model": self.model, "popularity": self.popularity}


@dataclass
class GateReport:
    layers: list[int | str]
    """Each expert: its depth, or query:depth."""
    mean: list[float]
    """The test users' mean weight on each depth."""


@dataclass
class EvalReport:
    """metrics.json: one entry per ranked split, in ranking order (valid, test, then the test
    views test_cold_start, test_long_tail and test_unmasked), and the gate of content
    models."""

    splits: dict[str, SplitMetrics]
    gate: GateReport | None = None

    def to_json(self) -> dict:
        out: dict = {name: metrics.to_json() for name, metrics in self.splits.items()}
        if self.gate is not None:
            out["gate"] = asdict(self.gate)
        return out

    @classmethod
    def from_json(cls, data: dict) -> EvalReport:
        gate = GateReport(**data["gate"]) if "gate" in data else None
        splits = {k: SplitMetrics(**v) for k, v in data.items() if k != "gate"}
        return cls(splits, gate)


class RunDir:
    """One run directory, read and written through typed methods (layout above)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.config_file = self.path / "config.json"
        self.checkpoint_dir = self.path / "checkpoints"
        self.checkpoint_name = "best"
        self.best_checkpoint = self.checkpoint_dir / f"{self.checkpoint_name}.ckpt"
        self.last_checkpoint = self.checkpoint_dir / "last.ckpt"
        self.split_dir = self.path / "split"
        self.catalog_file = self.path / "catalog.lance"
        self.metrics_file = self.path / "metrics.json"
        self.epochs_file = self.path / "epochs.json"
        self.gates_file = self.path / "gates.png"
        self.lock_file = self.path / "train.lock"
        self.logs_dir = self.path / "logs"
        self.interrupted_file = self.path / "interrupted.json"

    def __fspath__(self) -> str:
        return str(self.path)

    def has_checkpoint(self) -> bool:
        return self.best_checkpoint.exists()

    def is_finished(self) -> bool:
        """`train` got to the end: metrics.json is written last (before gates.png)."""
        return self.metrics_file.exists() and self.has_checkpoint()

    def continues(self) -> bool:
        """A run finished early by Ctrl-C (from its best checkpoint so far): usable, and the
        same `train` command continues it from last.ckpt, as it resumes a killed run."""
        return self.interrupted_file.exists() and self.last_checkpoint.exists()

    def mark_interrupted(self, epoch: int) -> None:
        self.interrupted_file.write_text(json.dumps({"after_epoch": epoch}) + "\n")

    def require_checkpoint(self) -> None:
        """A finished run to read (evaluate, recommend), else one line on what to do."""
        if self.path.is_dir() and self.config_file.exists() and not self.metrics_file.exists():
            if self.lock_file.exists() and RunLock(self.lock_file).holder_alive():
                raise LinkedOutError(
                    f"{self.path} is still being trained ({RunLock(self.lock_file).describe()}): "
                    "wait for it to finish"
                )
            raise LinkedOutError(
                f"{self.path} is an unfinished run (training stopped before it wrote "
                f"metrics.json): {RESUME_HINT}"
            )
        if not self.has_checkpoint():
            raise LinkedOutError(
                f"{self.path} holds no trained run (no checkpoints/best.ckpt): "
                "train one with `linkedout train`"
            )

    def verify(self) -> RunConfig:
        """Check a finished run's files before anything heavy loads (the CLI calls it before
        importing Lightning): config.json readable, the best checkpoint a weights-only file of
        this run, catalog.lance of this run. Each problem is one line naming the file."""
        self.require_checkpoint()
        config = self.config()
        saved = read_checkpoint(self.best_checkpoint, mmap=True)  # mapped: not read twice
        self.check_run_id(self.best_checkpoint, checkpoint_run_id(saved), config.run_id)
        where = self.catalog_location
        if where.published or self.catalog_file.exists():
            found = read_run_id(where.uri, where.storage_options)
            self.check_run_id(where.uri, found, config.run_id)
        return config

    # -- config.json ------------------------------------------------------------------------
    def write_config(self, config: RunConfig) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        _write_json(self.config_file, config.to_json())

    def config(self) -> RunConfig:
        try:
            data = json.loads(self.config_file.read_text(encoding="utf-8"))
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            config = RunConfig.from_json(data)
            if not isinstance(config.train, dict) or not isinstance(config.layers, list):
                raise ValueError("`train` or `layers` has the wrong type")
        except FileNotFoundError:
            raise LinkedOutError(
                f"{self.config_file} is missing: the run directory is damaged; train it again"
            ) from None
        except KeyError as e:
            raise LinkedOutError(
                f"{self.config_file} is damaged (no {e} entry): train the run again"
            ) from None
        except (OSError, ValueError, TypeError) as e:
            raise LinkedOutError(
                f"{self.config_file} is damaged ({first_line(e)}): train the run again"
            ) from None
        return config

    # -- split/ -----------------------------------------------------------------------------
    def write_split(self, split: SequenceSplit) -> str:
        return write_split(split, self.split_dir)

    def split(self) -> SequenceSplit:
        return read_split(self.split_dir)

    # -- checkpoints/ (written by Lightning's ModelCheckpoint, named here) ------------------
    def model(self, run_id: str | None = None) -> LinkedOut:
        """The best checkpoint's model alone, on the CPU, in eval mode; refused unless it
        carries `run_id` (config.json's). Built without Lightning, whose import alone costs
        seconds that `evaluate`, `recommend`, `serve` and `catalog add` need not pay: the
        checkpoint's weights are the module's `model.*` (its other buffers are not saved)."""
        saved = read_checkpoint(self.best_checkpoint)
        self.check_run_id(self.best_checkpoint, checkpoint_run_id(saved), run_id)
        try:
            hparams = dict(saved["hyper_parameters"])
            if "layers" in hparams:  # runs trained before the depth count was named num_layers
                hparams["num_layers"] = hparams.pop("layers")
            model = LinkedOut.stored(
                hparams["model"],
                hparams["num_items"],
                hparams.get("num_layers"),
                hparams.get("tokens"),
                hparams.get("dim"),
            )
            state = saved["state_dict"]
            others = [k for k in state if not k.startswith("model.")]
            if others:
                raise KeyError(f"weights outside the model: {others[:3]}")
            model.load_state_dict({k.removeprefix("model."): v for k, v in state.items()})
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise LinkedOutError(
                f"{self.best_checkpoint} does not hold this model ({first_line(e, 200)}): the run "
                "directory is damaged; train it again"
            ) from None
        return model.eval()

    def load_checkpoint_into(self, module: LinkedOutModule) -> None:
        """The best weights into the training module, on its device."""
        saved = read_checkpoint(self.best_checkpoint, map_location=module.device)
        self.check_run_id(self.best_checkpoint, checkpoint_run_id(saved), module.run_id)
        module.load_state_dict(saved["state_dict"])

    def check_run_id(self, path: Path, found: str | None, expected: str | None) -> None:
        if found != expected:
            raise LinkedOutError(
                f"{path} belongs to another training run (run id {found or 'none'}, "
                f"{self.config_file.name} says {expected or 'none'}): the run directory mixes "
                "files of two runs; train it again"
            )

    # -- catalog.lance ----------------------------------------------------------------------
    def write_catalog(
        self,
        experts: Iterator[torch.Tensor] | None,
        item_ids: list[str],
        shape: tuple[int, int, int],
        run_id: str | None = None,
    ) -> None:
        CatalogDataset.create(self.catalog_file, experts, item_ids, shape, run_id=run_id)

    @cached_property
    def catalog_location(self) -> CatalogLocation:
        """Where the catalog is read and changed: catalog.lance, or where it was published. Read
        once per RunDir: a server polls the catalog every second, not this file."""
        return read_location(self.path, self.catalog_file)

    def catalog_dataset(
        self, version: int | None = None, poll_options: dict[str, str] | None = None
    ) -> CatalogDataset:
        """The run's catalog dataset where it lives (its newest version unless `version`);
        `poll_options`: object-store settings under the published ones (serving's polls)."""
        where = self.catalog_location
        options = {**(poll_options or {}), **where.storage_options} if where.published else {}
        return CatalogDataset(where.uri, version, options)

    def catalog(
        self, ids: torch.Tensor | None, memory_budget: MemoryBudget, run_id: str | None = None
    ) -> Catalog:
        """The catalog as training wrote it (version 1), for evaluation and recommend."""
        where = self.catalog_location
        catalog = open_catalog(where.uri, ids, memory_budget, where.storage_options)
        self.check_run_id(where.uri, catalog.run_id, run_id)
        return catalog

    # -- metrics.json, epochs.json ----------------------------------------------------------
    def write_metrics(self, report: EvalReport) -> None:
        _write_json(self.metrics_file, report.to_json())

    def metrics(self) -> EvalReport:
        return EvalReport.from_json(json.loads(self.metrics_file.read_text()))

    def write_epochs(self, epochs: list[dict]) -> None:
        _write_json(self.epochs_file, {"epochs": epochs})

    def epochs(self) -> list[dict]:
        return json.loads(self.epochs_file.read_text())["epochs"]


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")
