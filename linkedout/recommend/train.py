"""`train(config) -> run directory`: everything a later `evaluate` or `recommend` needs (the
layout is in run.py). Three steps: `prepare` reads the inputs and builds the module and the
data, `fit` runs Lightning, `finalize` turns the best checkpoint into the catalog and the
metrics.

A run directory is trained by one `train` at a time (train.lock), and a run stopped on the way
(killed, power lost) resumes where its last checkpoint left it when the same command runs
again: checkpoints/last.ckpt holds, besides what Lightning keeps (weights, optimizer, epoch,
early stopping, the best score so far), the random states of torch, Python and NumPy and of
the batch order, so the resumed epochs draw the same numbers as an uninterrupted run and the
run ends with the same best epoch and metrics.json. `--out` is refused when it is a file, a
folder of other files, a finished run, or an unfinished run of other settings.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import lightning as L
import torch
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.accelerators import CPUAccelerator

from linkedout.errors import LinkedOutError, SettingError
from linkedout.memory import MemoryBudget
from linkedout.recommend.callbacks import EpochSummary, ResumeState, RunCheckpoint
from linkedout.recommend.catalog_additions import add_to_catalog, open_additions
from linkedout.recommend.catalog_dataset import CatalogDataset
from linkedout.recommend.config import TrainConfig
from linkedout.recommend.data import SequenceData, TrainSequences
from linkedout.recommend.evaluate import TrainedRun, evaluate, write_report
from linkedout.recommend.interactions import read_interactions
from linkedout.recommend.module import LinkedOutModule
from linkedout.recommend.resume import (
    Plan,
    jsonable,
    new_run_id,
    plan_out_dir,
    refuse_other_data,
    restore_earlier_logs,
    set_aside_earlier_logs,
)
from linkedout.recommend.run import RunConfig, RunDir, RunLock
from linkedout.recommend.split import SequenceSplit, build_split
from linkedout.recommend.tokens import ItemTokens, open_item_tokens
from linkedout.storage import FeatureStore

log = logging.getLogger(__name__)


def feature_layers(store: FeatureStore, fusion: str, wanted: list[int] | None = None) -> list[int]:
    """The stored depths a fusion mode reads, among `wanted` (default: every stored one), in
    stored order (so `--layers 8,4` and `4,8` train the same model); one-layer modes read only
    that layer."""
    stored = list(store.manifest.layers)
    if wanted:
        absent = [x for x in wanted if x not in stored]
        if absent:
            shown = ",".join(str(x) for x in wanted)
            raise SettingError(
                "layers", shown, f"depth {absent[0]} is not stored; the features hold {stored}"
            )
    layers = [x for x in stored if not wanted or x in wanted]
    if fusion in ("moe", "mean", "none"):
        return layers
    if fusion == "last":
        return layers[-1:]
    k = int(fusion.removeprefix("layer:"))  # ModelConfig checked the form
    if k not in stored:
        raise SettingError("fusion", fusion, f"depth {k} is not stored; the features hold {stored}")
    if k not in layers:
        raise SettingError("fusion", fusion, f"depth {k} is not among `layers` {layers}")
    return [k]


@dataclass
class Prepared:
    """What `prepare` hands to `fit` and `finalize`."""

    run: RunDir
    split: SequenceSplit
    module: LinkedOutModule
    data: SequenceData
    budget: MemoryBudget
    additions: list[FeatureStore]
    """The --catalog-features datasets, checked against the features' manifest."""


RESUME_ENV = "LINKEDOUT_RESUME_CHECKPOINT"
"""Set by the first process for the processes Lightning starts for data-parallel ranks: the
checkpoint they resume from too ("" for none)."""


def train(config: TrainConfig) -> Path | None:
    """Train, then evaluate the best checkpoint; returns the run directory (None on the other
    ranks of a data-parallel run, which the first rank finishes). An unfinished run of the
    same settings in `config.out` is resumed from its last checkpoint."""
    run = RunDir(config.out)
    if not is_first_process():
        # A data-parallel rank Lightning started: the first process checked --out, holds the
        # lock and writes everything; this one only trains its share.
        resume = os.environ.get(RESUME_ENV)
        if resume is None:  # started by hand on another machine
            resume = str(run.last_checkpoint) if run.last_checkpoint.exists() else ""
        plan = Plan(run_id="", resume=Path(resume) if resume else None)
        prepared = prepare(config, run, plan)
        fit(config, prepared, _trainer(config, run), plan)
        return None
    plan_out_dir(config, run)  # refuse a bad --out before writing anything
    trainer = _trainer(config, run)  # and settings Lightning refuses
    lock = RunLock(run.lock_file)
    created = not run.path.exists()
    note = lock.acquire()
    try:
        if note:
            print(f"note: {note}", file=sys.stderr, flush=True)
        plan = plan_out_dir(config, run, lock)  # again, now that no other `train` can
        for path in plan.clean:
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
        prepared = prepare(config, run, plan)
        if plan.resume is not None:
            print(f"resuming {run.path} from {plan.resume.name}", file=sys.stderr, flush=True)
        if not plan.fitted:
            trainer = fit(config, prepared, trainer, plan)
            if not trainer.is_global_zero:
                return None
        finished = finalize(prepared)
        if not trainer.interrupted:  # a run Ctrl-C ended early has now reached its end
            run.interrupted_file.unlink(missing_ok=True)
        else:
            print(
                f"note: interrupted during epoch {trainer.current_epoch}: {run.path} was finished "
                "from its best checkpoint so far; the same command continues training it",
                file=sys.stderr,
                flush=True,
            )
        return finished
    finally:
        lock.release()
        if created and run.path.is_dir() and not any(run.path.iterdir()):
            run.path.rmdir()  # failed before writing anything: leave no empty folder behind


def is_first_process() -> bool:
    """Whether this process is the first of a (possibly data-parallel) run, the one that
    writes: Lightning's rank (from RANK/LOCAL_RANK/SLURM_PROCID, which it sets for the ranks it
    starts) and, for runs over several machines, the machine's NODE_RANK."""
    node = os.environ.get("NODE_RANK") or os.environ.get("GROUP_RANK") or "0"
    return rank_zero_only.rank == 0 and node == "0"


def prepare(config: TrainConfig, run: RunDir, plan: Plan | None = None) -> Prepared:
    """Read the features and interactions, split, build the module and the data; the first
    rank writes config.json and the split (a resumed run's must match what it finds)."""
    plan = Plan(run_id=new_run_id()) if plan is None else plan
    store = FeatureStore.open(config.features, config.storage_options)
    layers = feature_layers(store, config.model.fusion, config.layers)
    queries = store.query_names(config.queries) if config.queries else []
    if (queries or config.slots) and config.model.fusion == "none":
        raise SettingError("fusion", "none", "an ID-only model reads no features: drop them")
    if config.slots is not None and config.slots[1] > store.manifest.tokens_per_layer:
        raise SettingError(
            "slots",
            f"{config.slots[0]}:{config.slots[1]}",
            f"{config.features} holds {store.manifest.tokens_per_layer} slots per depth",
        )
    # Refused now, not once training has ended.
    additions = [
        open_additions(uri, asdict(store.manifest), layers, config.storage_options)
        for uri in config.catalog_features
    ]
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
        tokens = open_item_tokens(
            store, layers, split.item_ids, split.num_with_features, budget, queries, config.slots
        )
    module = _module(config, split, tokens, budget, run)
    module.run_id = plan.run_id or None
    # Data-parallel ranks each build the same split (deterministic) but only the first writes;
    # Lightning starts the other ranks by running this same command again.
    if is_first_process():
        written = RunConfig(
            train=jsonable(asdict(config)),
            layers=layers,
            queries=queries,
            slots=list(config.slots) if config.slots else None,
            manifest=asdict(store.manifest),
            features_version=store.version,
            split=asdict(split.report),
            softmax="sampled" if module.softmax_items.sampled else "full",
            run_id=plan.run_id,
        )
        if plan.previous is not None:
            refuse_other_data(run, plan.previous, written)
            # The settings that may differ (NO_EFFECT) are kept as the run started.
            written.train = plan.previous.train
        run.write_config(written)
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
    return Prepared(run, split, module, data, budget, additions)


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


def fit(
    config: TrainConfig,
    prepared: Prepared,
    trainer: L.Trainer | None = None,
    plan: Plan | None = None,
) -> L.Trainer:
    trainer = _trainer(config, prepared.run) if trainer is None else trainer
    resume = plan.resume if plan is not None else None
    if trainer.num_devices > 1 and isinstance(trainer.accelerator, CPUAccelerator):
        # Processes on one machine share its cores: a full set of threads each would
        # oversubscribe them.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // trainer.num_devices))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        if resume is not None:  # the folders of the run being resumed: expected, and kept
            warnings.filterwarnings("ignore", ".*exists and is not empty.*")
        # Lightning starts the other data-parallel ranks inside fit, with this environment.
        os.environ[RESUME_ENV] = str(resume) if resume is not None else ""
        if resume is not None and is_first_process():
            set_aside_earlier_logs(prepared.run, plan.start_epoch)
        try:
            trainer.fit(
                prepared.module,
                datamodule=prepared.data,
                ckpt_path=resume,
                # Our checkpoints hold tensors and plain values only (`ResumeState`); Lightning
                # would otherwise unpickle whatever the file holds.
                **({"weights_only": True} if _FIT_TAKES_WEIGHTS_ONLY else {}),
            )
        except SystemExit:
            # Lightning turns Ctrl-C into sys.exit after a graceful stop; the run is still
            # worth finishing from the best checkpoint so far, and worth continuing later.
            if not trainer.interrupted:
                raise
            if is_first_process():
                prepared.run.mark_interrupted(trainer.current_epoch)
            log.warning("interrupted: finishing the run from the best checkpoint so far")
        finally:
            os.environ.pop(RESUME_ENV, None)
            signal.signal(signal.SIGINT, signal.default_int_handler)  # Lightning ignored it
            _leave_process_group()
    if resume is not None and trainer.is_global_zero:
        restore_earlier_logs(prepared.run)
    return trainer


def _leave_process_group() -> None:
    """Leave the data-parallel process group once training is over (nothing after it talks to
    the other ranks). Lightning keeps it open, and a process that exits with it open can abort
    at exit ("terminate called without an active exception": gloo's threads still hold work
    while the interpreter is torn down), which made the launcher kill a finished run."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _fit_takes_weights_only() -> bool:
    import inspect

    return "weights_only" in inspect.signature(L.Trainer.fit).parameters


_FIT_TAKES_WEIGHTS_ONLY = _fit_takes_weights_only()


def finalize(prepared: Prepared) -> Path:
    """The best checkpoint, loaded once into the training module: its catalog.lance, then its
    metrics.json and gates.png, evaluated on the CPU as `linkedout evaluate` would."""
    run, module = prepared.run, prepared.module
    if not run.has_checkpoint():
        raise LinkedOutError("training stopped before the first validation: nothing to keep")
    run.load_checkpoint_into(module)
    module.eval()
    write_run_catalog(run, module, prepared.split.item_ids)
    module.cpu()  # in place: what follows reads features on the CPU
    add_catalog_features(prepared)
    trained = TrainedRun(run, prepared.budget, model=module.model)
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
        run.write_catalog(chunks, item_ids, shape, run_id=module.run_id)


def add_catalog_features(prepared: Prepared) -> None:
    """The items of --catalog-features the trained catalog lacks, embedded by the best model
    and appended as later catalog versions (evaluation ranks version 1)."""
    if not prepared.additions:
        return
    run = prepared.run
    written = run.config()
    catalog = CatalogDataset(run.catalog_file)
    with torch.inference_mode():
        for store in prepared.additions:
            change = add_to_catalog(catalog, prepared.module.model, written, store)
            print(
                f"catalog: {change.added} item(s) of {store.uri} added ({change.already} held "
                f"already): {change.size:,} items in version {change.version}",
                file=sys.stderr,
                flush=True,
            )


def _trainer(config: TrainConfig, run: RunDir) -> L.Trainer:
    from lightning.fabric.utilities.exceptions import MisconfigurationException
    from lightning.pytorch.callbacks import EarlyStopping
    from lightning.pytorch.loggers import CSVLogger

    loggers = [CSVLogger(run.path, name="logs", version="")]
    try:
        import tensorboard  # noqa: F401  (the logger needs it at run time)
        from lightning.pytorch.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(run.path, name="logs", version="tensorboard"))
    except ImportError:
        pass
    monitor = "val_NDCG@10"
    callbacks = [
        RunCheckpoint(
            run.checkpoint_dir,
            filename=run.checkpoint_name,
            monitor=monitor,
            mode="max",
            save_top_k=1,
            save_last=True,  # checkpoints/last.ckpt, every epoch: what a resume starts from
            enable_version_counter=False,
        ),
        EarlyStopping(monitor, mode="max", patience=config.patience),
        EpochSummary(run),
        ResumeState(),
    ]
    try:
        return L.Trainer(
            max_epochs=config.epochs,
            accelerator=config.accelerator,
            devices=config.devices,
            num_nodes=config.num_nodes,
            strategy=config.strategy,
            # SequenceData shards batches and validation users across ranks itself.
            use_distributed_sampler=False,
            logger=loggers,
            callbacks=callbacks,
            enable_progress_bar=not config.quiet,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            log_every_n_steps=10,
            deterministic=True,
        )
    except MisconfigurationException as e:  # e.g. --accelerator gpu on a machine without one
        reason = " ".join(str(e).split())
        raise LinkedOutError(
            f"cannot train with --accelerator {config.accelerator} --devices {config.devices} "
            f"--strategy {config.strategy}: {reason}"
        ) from None
