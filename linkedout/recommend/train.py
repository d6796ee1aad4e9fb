"""`train(config) -> run directory`: everything a later `evaluate` or `recommend` needs.

Run directory:
    config.json            the resolved TrainConfig, the feature manifest, the split report
    checkpoints/best.ckpt  the best epoch by validation NDCG@10
    split/                 the leave-one-out split as TSV files (see split_files.py): any other
                           library can be trained and ranked on exactly this split
    catalog.lance          per-depth item vectors `e` of the best model, for ranking and serving
                           (layout in catalog.py)
    metrics.json           valid/test metrics, popularity baseline, cold-start slice
    epochs.json            per epoch: train loss, validation metrics, train and validation seconds
    gates.png              per-layer gate weights, overall and for a sample of users
    logs/                  CSV (and TensorBoard when installed) training logs
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import lightning as L
import torch
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.accelerators import CPUAccelerator

from linkedout.errors import LinkedOutError
from linkedout.recommend.data import (
    SequenceData,
    SequenceSplit,
    SplitConfig,
    StreamedTokens,
    TrainSequences,
    build_split,
)
from linkedout.recommend.interactions import read_interactions
from linkedout.recommend.model import ModelConfig
from linkedout.recommend.module import LinkedOutModule
from linkedout.recommend.split_files import write_split
from linkedout.storage import FeatureStore
from linkedout.storage.features import StreamingFeatures, default_memory_budget, open_features

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    features: str
    """Feature dataset written by `linkedout extract` (path or URI)."""
    interactions: str
    """CSV/TSV/Parquet of (user, item[, timestamp]) rows, or the MicroLens pairs format."""
    out: str
    """Run directory to create."""
    model: ModelConfig = field(default_factory=ModelConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    user_col: str | None = None
    item_col: str | None = None
    time_col: str | None = None
    epochs: int = 50
    batch_size: int = 256
    eval_batch_size: int = 512
    lr: float = 2e-3
    weight_decay: float = 0.01
    loss_weighting: str = "target"
    """target: every predicted position weighs the same in an epoch (as in RecBole's one-target
    samples); batch: each batch's loss is the mean over its own targets, so positions in
    batches of long histories weigh less (batches group histories of similar length)."""
    patience: int = 4
    """Epochs without a better validation NDCG@10 before stopping."""
    val_users: int | None = None
    """Validate each epoch on a fixed random sample of this many users (None: all of them).
    Model selection only; the final valid/test metrics always rank every user."""
    negatives: int = 1024
    """Sampled-softmax negatives per batch, when the catalog is too large for a full softmax."""
    full_softmax_max_items: int = 100_000
    """Largest catalog trained with a full softmax (every item a candidate at every step);
    larger ones train with a sampled softmax of `negatives` items."""
    seed: int = 42
    feature_memory_gb: float | None = None
    """Keep item features in memory up to this size, else stream them from the store; the
    same budget holds the per-layer item embeddings validation and evaluation rank against,
    else they are written to Lance and ranked chunk by chunk (default: half the free memory)."""
    accelerator: str = "auto"
    devices: int = 1
    """Processes (GPUs, or CPU processes) per node; more than 1 trains data-parallel."""
    num_nodes: int = 1
    strategy: str = "auto"
    """Lightning strategy: auto (ddp when devices x nodes > 1), ddp, ..."""
    storage_options: dict[str, str] = field(default_factory=dict)
    progress: bool = True


def feature_layers(store: FeatureStore, fusion: str) -> list[int]:
    """The stored depths a fusion mode reads (one-layer modes read only that layer)."""
    layers = list(store.manifest.layers)
    if fusion in ("moe", "mean", "none"):
        return layers
    if fusion == "last":
        return layers[-1:]
    if fusion.startswith("layer:"):
        try:
            k = int(fusion.split(":", 1)[1])
        except ValueError:
            raise LinkedOutError(
                f"--fusion {fusion}: write layer:K with K a stored depth"
            ) from None
        if k not in layers:
            raise LinkedOutError(f"--fusion {fusion}: depth {k} is not stored; it holds {layers}")
        return [k]
    raise LinkedOutError(f"--fusion {fusion!r}: use moe, mean, last, layer:K or none")


def item_tokens(
    store: FeatureStore, layers: list[int], split: SequenceSplit, memory_budget: int | None
) -> torch.Tensor | StreamedTokens:
    """`[num_items, L, T, D]` in split order (row 0 and items without features zero): in
    memory when it fits the budget, else read from the store batch by batch."""
    features = open_features(store, layers, memory_budget)
    if isinstance(features, StreamingFeatures):
        return StreamedTokens(features, split)
    if features.ids != split.item_ids[: split.num_with_features]:
        raise LinkedOutError(f"{store.uri} changed while training was starting: run again")
    tokens = features.tokens
    pad = torch.zeros((1, *tokens.shape[1:]), dtype=tokens.dtype)
    missing = torch.zeros(
        (split.num_items - 1 - len(tokens), *tokens.shape[1:]), dtype=tokens.dtype
    )
    return torch.cat([pad, tokens, missing])


def train(config: TrainConfig) -> Path | None:
    """Train, then evaluate the best checkpoint; returns the run directory (None on the other
    ranks of a data-parallel run, which the first rank finishes)."""
    run = Path(config.out)
    if (run / "checkpoints" / "best.ckpt").exists():
        raise LinkedOutError(f"{run} already holds a trained run: choose a new --out")
    fusion = config.model.fusion
    if config.loss_weighting not in ("target", "batch"):
        raise LinkedOutError(f"loss_weighting {config.loss_weighting!r}: use target or batch")
    if fusion == "none" and not config.model.ids:
        raise LinkedOutError("--fusion none uses no content: add --ids (the ID-only SASRec)")
    store = FeatureStore.open(config.features, config.storage_options)
    layers = feature_layers(store, fusion)
    log_ = read_interactions(config.interactions, config.user_col, config.item_col, config.time_col)
    split = build_split(log_, store.ids(), config.split)
    if split.num_items - 1 > split.num_with_features and not config.model.ids:
        raise LinkedOutError(
            "--allow-missing serves items without features by their ID embedding: add --ids"
        )
    L.seed_everything(config.seed, workers=True, verbose=False)
    budget = None if config.feature_memory_gb is None else int(config.feature_memory_gb * 2**30)
    tokens = item_tokens(store, layers, split, budget) if fusion != "none" else None
    module = LinkedOutModule.create(
        config.model,
        split.num_items,
        tuple(tokens.shape[1:]) if tokens is not None else (1, 1, 1),
        lr=config.lr,
        weight_decay=config.weight_decay,
        negatives=config.negatives,
        full_softmax_max_items=config.full_softmax_max_items,
    )
    module.attach(
        tokens,
        split.train_counts(),
        [split.history(u, "valid") for u in range(len(split.users))],
        memory_budget=default_memory_budget() if budget is None else budget,
        spill_dir=run,
        targets_per_batch=(
            TrainSequences(split, config.model.max_len).targets_per_batch(config.batch_size)
            if config.loss_weighting == "target"
            else None
        ),
    )
    # Data-parallel ranks each build the same split (deterministic) but only the first writes;
    # Lightning starts the other ranks by running this same command again.
    if rank_zero_only.rank == 0:
        run.mkdir(parents=True, exist_ok=True)
        _write_json(
            run / "config.json",
            {
                "train": _jsonable(asdict(config)),
                "layers": layers,
                "manifest": asdict(store.manifest),
                "features_version": store.version,
                "split": asdict(split.report),
                "softmax": "sampled" if module.sampled else "full",
            },
        )
        write_split(split, run / "split")
    data = SequenceData(
        split,
        config.model.max_len,
        config.batch_size,
        config.eval_batch_size,
        config.seed,
        config.val_users,
        streamed=module.streamed_tokens,
    )
    trainer = _trainer(config, run)
    if trainer.num_devices > 1 and isinstance(trainer.accelerator, CPUAccelerator):
        # Processes on one machine share its cores: a full set of threads each would
        # oversubscribe them.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // trainer.num_devices))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        try:
            trainer.fit(module, datamodule=data)
        except SystemExit:
            # Lightning turns Ctrl-C into sys.exit after a graceful stop; the run is still
            # worth finishing from the best checkpoint so far.
            if not trainer.interrupted:
                raise
            log.warning("interrupted: finishing the run from the best checkpoint so far")
        finally:
            signal.signal(signal.SIGINT, signal.default_int_handler)  # Lightning ignored it
    if not trainer.is_global_zero:
        return None  # the first rank finishes the run
    best = run / "checkpoints" / "best.ckpt"
    if not best.exists():
        raise LinkedOutError("training stopped before the first validation: nothing to keep")
    from linkedout.recommend.evaluate import evaluate_run, write_run_catalog

    write_run_catalog(run, best, module, split.item_ids)
    evaluate_run(run, write=True, memory_budget=budget)
    return run


def _trainer(config: TrainConfig, run: Path) -> L.Trainer:
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    loggers = [CSVLogger(run, name="logs", version="")]
    try:
        import tensorboard  # noqa: F401  (the logger needs it at run time)
        from lightning.pytorch.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(run, name="logs", version="tensorboard"))
    except ImportError:
        pass
    monitor = "val_NDCG@10"
    return L.Trainer(
        max_epochs=config.epochs,
        accelerator=config.accelerator,
        devices=config.devices,
        num_nodes=config.num_nodes,
        strategy=config.strategy,
        # SequenceData shards batches and validation users across ranks itself.
        use_distributed_sampler=False,
        logger=loggers,
        callbacks=[
            ModelCheckpoint(
                run / "checkpoints",
                filename="best",
                monitor=monitor,
                mode="max",
                save_top_k=1,
                enable_version_counter=False,
            ),
            EarlyStopping(monitor, mode="max", patience=config.patience),
            EpochSummary(run / "epochs.json"),
        ],
        enable_progress_bar=config.progress,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=10,
        deterministic=True,
    )


class EpochSummary(L.Callback):
    """One line per epoch on stderr (loss, validation ranking, seconds, a new best marked),
    and the same in `epochs.json`, rewritten each epoch, for curves and throughput."""

    def __init__(self, path: Path):
        self.path = path
        self.best = float("-inf")
        self.epochs: list[dict] = []
        self._train_start = self._val_start = 0.0
        self._val_seconds = 0.0

    def on_train_epoch_start(self, trainer, module) -> None:
        self._train_start = time.perf_counter()
        self._val_seconds = 0.0

    def on_validation_epoch_start(self, trainer, module) -> None:
        self._val_start = time.perf_counter()

    def on_validation_epoch_end(self, trainer, module) -> None:
        self._val_seconds += time.perf_counter() - self._val_start

    def on_train_epoch_end(self, trainer, module) -> None:  # runs after the epoch's validation
        m = trainer.callback_metrics
        if "val_HR@10" not in m or not trainer.is_global_zero:
            return
        seconds = time.perf_counter() - self._train_start
        record = {
            "epoch": trainer.current_epoch,
            "train_loss": float(m["train_loss"]) if "train_loss" in m else None,
            "train_seconds": seconds - self._val_seconds,
            "val_seconds": self._val_seconds,
            "train_sequences": len(trainer.train_dataloader.dataset),
        } | {f"val_{k}": float(m[f"val_{k}"]) for k in ("HR@10", "NDCG@10", "HR@20", "NDCG@20")}
        self.epochs.append(record)
        _write_json(self.path, {"epochs": self.epochs})
        ndcg = record["val_NDCG@10"]
        mark = " (best)" if ndcg > self.best else ""
        self.best = max(self.best, ndcg)
        loss = f"loss {record['train_loss']:.4f}, " if record["train_loss"] is not None else ""
        print(
            f"epoch {trainer.current_epoch}: {loss}val HR@10 {record['val_HR@10']:.4f}, "
            f"NDCG@10 {ndcg:.4f}{mark} ({record['train_seconds']:.0f} s train, "
            f"{self._val_seconds:.0f} s validation)",
            file=sys.stderr,
            flush=True,
        )


def _jsonable(value):
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value if isinstance(value, (str, int, float, bool, type(None))) else str(value)


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")
