"""`train(config) -> run directory`: everything a later `evaluate` or `recommend` needs (the
layout is in run.py). Three steps: `prepare` reads the inputs and builds the module and the
data, `fit` runs Lightning, `finalize` turns the best checkpoint into the catalog and the
metrics.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import lightning as L
import torch
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.accelerators import CPUAccelerator

from linkedout.errors import LinkedOutError, SettingError
from linkedout.memory import MemoryBudget
from linkedout.recommend.config import TrainConfig
from linkedout.recommend.data import SequenceData, SequenceSplit, TrainSequences, build_split
from linkedout.recommend.evaluate import TrainedRun, evaluate, write_report
from linkedout.recommend.interactions import read_interactions
from linkedout.recommend.module import LinkedOutModule
from linkedout.recommend.run import RunConfig, RunDir
from linkedout.recommend.tokens import ItemTokens, open_item_tokens
from linkedout.storage import FeatureStore

log = logging.getLogger(__name__)


def feature_layers(store: FeatureStore, fusion: str) -> list[int]:
    """The stored depths a fusion mode reads (one-layer modes read only that layer)."""
    layers = list(store.manifest.layers)
    if fusion in ("moe", "mean", "none"):
        return layers
    if fusion == "last":
        return layers[-1:]
    k = int(fusion.removeprefix("layer:"))  # ModelConfig checked the form
    if k not in layers:
        raise SettingError("fusion", fusion, f"depth {k} is not stored; the features hold {layers}")
    return [k]


@dataclass
class Prepared:
    """What `prepare` hands to `fit` and `finalize`."""

    run: RunDir
    split: SequenceSplit
    module: LinkedOutModule
    data: SequenceData
    budget: MemoryBudget


def train(config: TrainConfig) -> Path | None:
    """Train, then evaluate the best checkpoint; returns the run directory (None on the other
    ranks of a data-parallel run, which the first rank finishes)."""
    run = RunDir(config.out)
    if run.has_checkpoint():
        raise LinkedOutError(f"{run.path} already holds a trained run: choose a new --out")
    prepared = prepare(config, run)
    trainer = fit(config, prepared)
    if not trainer.is_global_zero:
        return None  # the first rank finishes the run
    return finalize(prepared)


def prepare(config: TrainConfig, run: RunDir) -> Prepared:
    """Read the features and interactions, split, build the module and the data; the first
    rank writes config.json and the split."""
    store = FeatureStore.open(config.features, config.storage_options)
    layers = feature_layers(store, config.model.fusion)
    log_ = read_interactions(config.interactions, config.user_col, config.item_col, config.time_col)
    split = build_split(log_, store.ids(), config.split)
    if split.num_items - 1 > split.num_with_features and not config.model.ids:
        raise LinkedOutError(
            "--allow-missing serves items without features by their ID embedding: add --ids"
        )
    L.seed_everything(config.seed, workers=True, verbose=False)
    budget = MemoryBudget.resolve(config.feature_memory_gb)
    tokens = None
    if config.model.fusion != "none":
        tokens = open_item_tokens(store, layers, split.item_ids, split.num_with_features, budget)
    module = _module(config, split, tokens, budget, run)
    # Data-parallel ranks each build the same split (deterministic) but only the first writes;
    # Lightning starts the other ranks by running this same command again.
    if rank_zero_only.rank == 0:
        run.write_config(
            RunConfig(
                train=_jsonable(asdict(config)),
                layers=layers,
                manifest=asdict(store.manifest),
                features_version=store.version,
                split=asdict(split.report),
                softmax="sampled" if module.sampled else "full",
            )
        )
        run.write_split(split)
    data = SequenceData(
        split,
        config.model.max_len,
        config.batch_size,
        config.eval_batch_size,
        config.seed,
        config.val_users,
        tokens=module.streamed_tokens,
    )
    return Prepared(run, split, module, data, budget)


def _module(
    config: TrainConfig,
    split: SequenceSplit,
    tokens: ItemTokens | None,
    budget: MemoryBudget,
    run: RunDir,
) -> LinkedOutModule:
    module = LinkedOutModule.create(
        config.model,
        split.num_items,
        tuple(tokens.shape[1:]) if tokens is not None else None,
        lr=config.lr,
        weight_decay=config.weight_decay,
        negatives=config.negatives,
        full_softmax_max_items=config.full_softmax_max_items,
    )
    module.attach(
        tokens,
        split.train_counts(),
        [split.history(u, "valid") for u in range(len(split.users))],
        memory_budget=budget,
        spill_dir=run.path,
        targets_per_batch=(
            TrainSequences(split, config.model.max_len).targets_per_batch(config.batch_size)
            if config.loss_weighting == "target"
            else None
        ),
    )
    return module


def fit(config: TrainConfig, prepared: Prepared) -> L.Trainer:
    trainer = _trainer(config, prepared.run)
    if trainer.num_devices > 1 and isinstance(trainer.accelerator, CPUAccelerator):
        # Processes on one machine share its cores: a full set of threads each would
        # oversubscribe them.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // trainer.num_devices))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        try:
            trainer.fit(prepared.module, datamodule=prepared.data)
        except SystemExit:
            # Lightning turns Ctrl-C into sys.exit after a graceful stop; the run is still
            # worth finishing from the best checkpoint so far.
            if not trainer.interrupted:
                raise
            log.warning("interrupted: finishing the run from the best checkpoint so far")
        finally:
            signal.signal(signal.SIGINT, signal.default_int_handler)  # Lightning ignored it
    return trainer


def finalize(prepared: Prepared) -> Path:
    """The best checkpoint, loaded once into the training module: its catalog.lance, then its
    metrics.json and gates.png, evaluated on the CPU as `linkedout evaluate` would."""
    run, module = prepared.run, prepared.module
    if not run.has_checkpoint():
        raise LinkedOutError("training stopped before the first validation: nothing to keep")
    run.load_checkpoint_into(module)
    module.eval()
    write_run_catalog(run, module, prepared.split.item_ids)
    trained = TrainedRun(run, prepared.budget, module=module.cpu())
    write_report(trained, *evaluate(trained))
    return run.path


def write_run_catalog(run: RunDir, module: LinkedOutModule, item_ids: list[str]) -> None:
    """Write the module's per-depth item vectors to the run's catalog.lance, chunk by chunk,
    from the training module's item table: ranking and serving then never run the item tower
    over the catalog again."""
    model = module.model
    shape = (len(item_ids) + 1, model.num_layers, model.expert_dim)
    with torch.inference_mode():
        chunks = module.code_chunks() if model.content else None
        run.write_catalog(chunks, item_ids, shape)


def _trainer(config: TrainConfig, run: RunDir) -> L.Trainer:
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    loggers = [CSVLogger(run.path, name="logs", version="")]
    try:
        import tensorboard  # noqa: F401  (the logger needs it at run time)
        from lightning.pytorch.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(run.path, name="logs", version="tensorboard"))
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
                run.checkpoint_dir,
                filename=run.checkpoint_name,
                monitor=monitor,
                mode="max",
                save_top_k=1,
                enable_version_counter=False,
            ),
            EarlyStopping(monitor, mode="max", patience=config.patience),
            EpochSummary(run),
        ],
        enable_progress_bar=not config.quiet,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=10,
        deterministic=True,
    )


class EpochSummary(L.Callback):
    """One line per epoch on stderr (loss, validation ranking, seconds, a new best marked),
    and the same in `epochs.json`, rewritten each epoch, for curves and throughput."""

    def __init__(self, run: RunDir):
        self.run = run
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
        self.run.write_epochs(self.epochs)
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
