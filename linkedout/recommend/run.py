"""The run directory: what `train` writes and `evaluate` and `recommend` read, in one place.

Run directory:
    config.json            the resolved TrainConfig, the feature manifest, the split report
                           (`RunConfig`)
    checkpoints/best.ckpt  the best epoch by validation NDCG@10
    split/                 the leave-one-out split as TSV files (see split_files.py): any other
                           library can be trained and ranked on exactly this split
    catalog.lance          per-depth item vectors `e` of the best model, for ranking and serving
                           (layout in catalog.py)
    metrics.json           valid/test metrics, popularity baseline, cold-start slice
                           (`EvalReport`)
    epochs.json            per epoch: train loss, validation metrics, train and validation seconds
    gates.png              per-layer gate weights, overall and for a sample of users
    logs/                  CSV (and TensorBoard when installed) training logs
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch

from linkedout.errors import LinkedOutError
from linkedout.memory import MemoryBudget
from linkedout.recommend.catalog import Catalog, open_catalog, write_catalog
from linkedout.recommend.data import SequenceSplit
from linkedout.recommend.module import LinkedOutModule
from linkedout.recommend.split_files import read_split, write_split


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

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> RunConfig:
        return cls(**{f.name: data[f.name] for f in fields(cls)})


@dataclass
class SplitMetrics:
    """The model's and popularity's metrics on one split (`RankingMetrics.compute()`)."""

    model: dict[str, float]
    popularity: dict[str, float]

    def to_json(self) -> dict:
        return {"model": self.model, "popularity": self.popularity}


@dataclass
class GateReport:
    layers: list[int]
    mean: list[float]
    """The test users' mean weight on each depth."""


@dataclass
class EvalReport:
    """metrics.json: one entry per ranked split, in ranking order (valid, test, then the test
    views test_cold_start and test_unmasked), and the gate of content models."""

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
        self.split_dir = self.path / "split"
        self.catalog_file = self.path / "catalog.lance"
        self.metrics_file = self.path / "metrics.json"
        self.epochs_file = self.path / "epochs.json"
        self.gates_file = self.path / "gates.png"

    def __fspath__(self) -> str:
        return str(self.path)

    def has_checkpoint(self) -> bool:
        return self.best_checkpoint.exists()

    def require_checkpoint(self) -> None:
        if not self.has_checkpoint():
            raise LinkedOutError(
                f"{self.path} holds no trained run (no checkpoints/best.ckpt): "
                "train one with `linkedout train`"
            )

    # -- config.json ------------------------------------------------------------------------
    def write_config(self, config: RunConfig) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        _write_json(self.config_file, config.to_json())

    def config(self) -> RunConfig:
        return RunConfig.from_json(json.loads(self.config_file.read_text()))

    # -- split/ -----------------------------------------------------------------------------
    def write_split(self, split: SequenceSplit) -> str:
        return write_split(split, self.split_dir)

    def split(self) -> SequenceSplit:
        return read_split(self.split_dir)

    # -- checkpoints/ (written by Lightning's ModelCheckpoint, named here) ------------------
    def checkpoint(self) -> LinkedOutModule:
        """The best checkpoint's module, on the CPU, in eval mode."""
        saved = torch.load(self.best_checkpoint, map_location="cpu", weights_only=False)
        hparams = dict(saved["hyper_parameters"])
        if "layers" in hparams:  # runs trained before the depth count was named num_layers
            hparams["num_layers"] = hparams.pop("layers")
        module = LinkedOutModule(**hparams)
        module.load_state_dict(saved["state_dict"])
        return module.eval()

    def load_checkpoint_into(self, module: LinkedOutModule) -> None:
        """The best weights into the training module, on its device."""
        saved = torch.load(self.best_checkpoint, map_location=module.device, weights_only=False)
        module.load_state_dict(saved["state_dict"])

    # -- catalog.lance ----------------------------------------------------------------------
    def write_catalog(
        self,
        experts: Iterator[torch.Tensor] | None,
        item_ids: list[str],
        shape: tuple[int, int, int],
    ) -> None:
        write_catalog(self.catalog_file, experts, item_ids, shape)

    def catalog(self, ids: torch.Tensor | None, memory_budget: MemoryBudget) -> Catalog:
        return open_catalog(self.catalog_file, ids, memory_budget)

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
