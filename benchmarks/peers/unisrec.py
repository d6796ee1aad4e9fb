"""Peer baseline: UniSRec (Hou et al., KDD 2022) and FDSA (Zhang et al., IJCAI 2019), the
content-aware peers, trained from scratch and evaluated on a LinkedOut split, fed the same MiniLM
title vectors LinkedOut's features hold.

Runs in its own environment (.venv-peers, built by benchmarks/peers/setup.sh), never the project's:

    .venv-peers/bin/python benchmarks/peers/unisrec.py --split DIR --vectors OUT/item_vectors \\
        --row inductive|transductive|fdsa --out FILE.json [--max-minutes M] [--users N]

`--vectors` is what `benchmarks/peers/item_vectors.py` wrote from the feature dataset (one
vector per item of `items.tsv`). The published code (`../shared/peers/UniSRec`, unmodified) is
copied into the work dir and imported from there; everything this runner changes is a config
value, listed in the JSON's `changed`. Training stops at RecBole's early stopping or at the
`--max-minutes` budget, whichever comes first; the budget counts every invocation of the same
run, and an interrupted or budget-stopped run continues from its last epoch when run again with
the same arguments (a larger `--max-minutes` trains it further). See README.md.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from recbole_common import (  # noqa: E402
    DATASET,
    KS,
    LOG_PREFIX,
    SHIMS,
    EpochTimer,
    Split,
    TimeBudgetReached,
    agreement,
    apply_shims,
    base_config,
    check_arguments,
    epoch_line,
    history_ids,
    log,
    make_config,
    peer_arguments,
    prepare_verified,
    prepare_workdir,
    read_split,
    recbole_result,
    score_ranks,
    split_digest,
    split_summary,
    write_atomic,
)

LOG_PREFIX[0] = "unisrec"
PEER_CODE = HERE.parents[1].parent / "shared" / "peers" / "UniSRec"
PROGRESS = "progress.json"

# The rows: UniSRec's two fine-tuning stages (no pre-training: it needs other domains' data),
# and FDSA from the same repository's baselines.
ROWS = {
    "inductive": ("UniSRec", "inductive_ft", "UniSRec inductive (text only)"),
    "transductive": ("UniSRec", "transductive_ft", "UniSRec transductive (text + IDs)"),
    "fdsa": ("FDSA", None, "FDSA (IDs + text, feature-level self-attention)"),
}


def rename_items(split: Split) -> Split:
    """The split with item k of `items.tsv` renamed to the token "k" (1-based): UniSRec's dataset
    reads an item's vector from row `int(token)` of the vector file, so tokens must be the rows.
    Every figure is ranked over the same items, so results need no renaming back."""
    index = {item: str(k + 1) for k, item in enumerate(split.items)}
    seqs = [[index[i] for i in seq] for seq in split.seqs]
    return Split(split.users, seqs, [index[i] for i in split.items], split.meta)


def write_vectors(vectors: Path, meta: dict, items_tsv: Path, data_dir: Path, n_items: int) -> None:
    """`DATASET.feat1CLS` (raw float32 `[1 + items, D]`, row 0 unused) from item_vectors.npy,
    after checking that the vectors follow this split's items.tsv."""
    sha = hashlib.sha256(items_tsv.read_bytes()).hexdigest()
    if meta.get("items_sha256") != sha:
        raise SystemExit(
            f"{vectors}: written for another items.tsv (sha256 {meta.get('items_sha256')}, this "
            f"split's is {sha}); run benchmarks/peers/item_vectors.py on this split"
        )
    table = np.load(vectors.with_suffix(".npy")).astype(np.float32)
    if table.shape[0] != n_items:
        raise SystemExit(f"{vectors}: {table.shape[0]} rows for {n_items} items")
    rows = np.concatenate([np.zeros((1, table.shape[1]), np.float32), table])
    rows.tofile(data_dir / f"{DATASET}.feat1CLS")


def run_key(args, split: Split, vectors_meta: dict) -> dict:
    """What makes two invocations the same run (a run continues only under the same key)."""
    return {
        "row": args.row,
        "split_sha256": split.meta.get("sha256"),
        "users": len(split.users),
        "vectors": {k: vectors_meta[k] for k in ("features", "features_version", "layer", "slot")},
        "seed": args.seed,
        "width": args.width,
        "stopping_step": args.stopping_step,
        "epochs": args.epochs,
    }


def atomic_save(state: dict, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def atomic_json(data: dict, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


def cold_targets(split: Split, dataset, phase: str) -> set[int]:
    """RecBole item ids of targets that no training interaction holds (LinkedOut's cold-start
    slice: every train-labelled position counts, the first included)."""
    item_id = {str(t): i for i, t in enumerate(dataset.field2id_token["item_id"])}
    trained = {i for seq in split.seqs for i in seq[:-2]}
    at = -2 if phase == "valid" else -1
    return {item_id[seq[at]] for seq in split.seqs if seq[at] not in trained}


def main(argv: list[str] | None = None) -> int:
    p = peer_arguments(__doc__.split("\n\n")[0], budget_minutes=60.0)
    p.add_argument(
        "--vectors", type=Path, required=True, help="item_vectors (.npy + .json) of this split"
    )
    p.add_argument("--row", choices=sorted(ROWS), required=True, help="which peer row to train")
    p.add_argument("--code", type=Path, default=PEER_CODE, help="the published UniSRec code")
    p.add_argument(
        "--width",
        type=int,
        default=64,
        help="Transformer width (64, LinkedOut's and the SASRec peer's; the authors' is 300)",
    )
    p.add_argument("--fresh", action="store_true", help="discard a run to continue, start over")
    args = p.parse_args(argv)
    check_arguments(p, args)
    if args.width < 2:
        p.error("--width: give 2 or more")
    if not (args.code / "unisrec.py").exists():
        p.error(f"--code {args.code}: no UniSRec code there (see benchmarks/peers/README.md)")
    for suffix in (".npy", ".json"):
        if not args.vectors.with_suffix(suffix).exists():
            p.error(f"--vectors: no {args.vectors.with_suffix(suffix)}; run item_vectors.py first")

    threads = args.threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="[recbole] %(message)s")
    apply_shims()
    t_start = time.perf_counter()

    split = read_split(args.split, args.users)
    digest, recorded = split_digest(args.split), split.meta.get("sha256")
    if digest != recorded:
        raise SystemExit(f"{args.split}: the files' sha256 {digest} is not split.json's {recorded}")
    vectors_meta = json.loads(args.vectors.with_suffix(".json").read_text())
    key = run_key(args, split, vectors_meta)
    out = args.out.resolve()
    work = out.parent / f"{out.stem}.recbole-work"
    # The copied code is imported from here; a checkpoint's pickled Config needs it too.
    sys.path.insert(0, str(work / "code"))
    previous, state = None, None
    if not args.fresh and (work / "saved" / "last.pth").exists():
        state = torch.load(work / "saved" / "last.pth", map_location="cpu", weights_only=False)
        # Checkpoints of 2026-12-07's first runs kept their progress in progress.json alone.
        previous = state.get("progress") or json.loads((work / PROGRESS).read_text())
        if previous.get("key") != key:
            log("the run in the work dir was made with other arguments: starting over")
            previous, state = None, None
    work = prepare_workdir(out, keep=previous is not None)
    renamed = rename_items(split)
    data_dir = work / DATASET
    if previous is None:
        write_atomic(renamed, data_dir)
        items_tsv = args.split / "items.tsv"
        write_vectors(args.vectors, vectors_meta, items_tsv, data_dir, len(split.items))
        shutil.copytree(args.code, work / "code", ignore=shutil.ignore_patterns("__pycache__"))

    import pandas
    import recbole
    from data.dataset import UniSRecDataset
    from recbole.config import Config
    from recbole.utils import get_trainer, init_seed

    model_name, stage, title = ROWS[args.row]
    if model_name == "UniSRec":
        from unisrec import UniSRec as model_class

        props = ["props/UniSRec.yaml", "props/finetune.yaml"]
    else:
        from baselines.fdsa import FDSA as model_class

        props = ["props/FDSA.yaml"]
    dim = int(vectors_meta["dim"])
    changed = {
        # MiniLM's vectors are 384 wide, the authors' BERT CLS vectors 768.
        "plm_size": dim,
        ("adaptor_layers" if model_name == "UniSRec" else "adapter_layers"): [dim, args.width],
        # The authors' 300 wide Transformer (inner 256) costs about 40 minutes an epoch of
        # MicroLens-50K on 2 cores; LinkedOut's own model and the SASRec peer are 64 wide
        # (inner 128), which is the comparison of equals anyway. `--width 300` restores theirs.
        "hidden_size": args.width,
        "inner_size": 256 if args.width == 300 else 2 * args.width,
        # Our split, read as RecBole's leave-one-out of one time-ordered file (verified row by
        # row below) instead of the authors' pre-split train/valid/test files.
        "benchmark_filename": None,
        "alias_of_item_id": None,
        "load_col": {"inter": ["user_id", "item_id", "timestamp"], "item": ["item_id"]},
        "eval_args": {
            "split": {"LS": "valid_and_test"},
            "order": "TO",
            "mode": "full",
            "group_by": "user",
        },
        "topk": list(KS),  # the authors report @10 and @50; validation is NDCG@10 either way
        "metrics": ["Hit", "NDCG"],
    }
    if stage is not None:
        changed["train_stage"] = stage
    if model_name == "FDSA":
        changed["selected_features"] = []  # the authors' "class" field: MicroLens has none
    config_dict = {**base_config(work, args.stopping_step, args.epochs, args.seed), **changed}
    # The props paths are relative to the code, as finetune.py reads them.
    config = make_config(
        Config,
        cwd=work / "code",
        model=model_class,
        dataset=DATASET,
        config_file_list=props,
        config_dict=config_dict,
    )
    init_seed(config["seed"], config["reproducibility"])
    dataset = UniSRecDataset(config)
    train_data, valid_data, test_data, verified = prepare_verified(
        config, dataset, renamed, t_start
    )
    if args.verify_only:
        return 0

    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model = model_class(config, train_data._dataset).to(config["device"])
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    # Importing RecBole's sequential models turns autograd anomaly detection on process-wide
    # (sine.py); it changes no value and doubles an epoch (see recbole_sasrec.py).
    if torch.is_anomaly_enabled():
        torch.autograd.set_detect_anomaly(False)
        SHIMS.append("anomaly detection off (RecBole's sine.py turns it on process-wide)")

    saved = work / "saved"
    saved.mkdir(exist_ok=True)
    best_file, last_file = saved / "best.pth", saved / "last.pth"
    progress = previous or {
        "key": key,
        "epochs": [],
        "best_epoch": 0,
        "fit_seconds": 0.0,
        "invocations": [],
    }
    if previous is not None:
        # RecBole's own resume_checkpoint loads with torch.load's weights_only default, which
        # refuses its pickled Config: the same steps, on our own file, read in full above.
        model.load_state_dict(state["state_dict"])
        model.load_other_parameter(state.get("other_parameter"))
        trainer.optimizer.load_state_dict(state["optimizer"])
        trainer.start_epoch = state["epoch"] + 1
        trainer.cur_step = state["cur_step"]
        trainer.best_valid_score = state["best_valid_score"]
        log(f"continuing from epoch {trainer.start_epoch} ({progress['fit_seconds'] / 60:.1f} min)")
    progress["invocations"].append({"from_epoch": trainer.start_epoch + 1})

    def checkpoint(epoch_idx: int) -> dict:
        # RecBole's _save_checkpoint state, plus this runner's progress (one file to resume
        # from, so a kill between two writes cannot leave them disagreeing).
        return {
            "progress": progress,
            "config": config,
            "epoch": epoch_idx,
            "cur_step": trainer.cur_step,
            "best_valid_score": trainer.best_valid_score,
            "state_dict": model.state_dict(),
            "other_parameter": model.other_parameter(),
            "optimizer": trainer.optimizer.state_dict(),
        }

    timer = EpochTimer(trainer)
    budget_s = args.max_minutes * 60.0
    t_fit = time.perf_counter()
    spent_before = progress["fit_seconds"]

    def on_epoch(epoch_idx: int, valid_score: float) -> None:
        elapsed = spent_before + time.perf_counter() - t_fit
        if trainer.cur_step == 0:  # RecBole's early_stopping just took this epoch as the best
            progress["best_epoch"] = epoch_idx + 1
            atomic_save(checkpoint(epoch_idx), best_file)
        progress["epochs"].append(timer.record(epoch_idx, trainer.train_loss_dict[epoch_idx]))
        progress["fit_seconds"] = round(elapsed, 1)
        # One file holds the weights and the bookkeeping a continuation reads, written whole;
        # progress.json is a readable copy.
        atomic_save(checkpoint(epoch_idx), last_file)
        atomic_json(progress, work / PROGRESS)
        best = progress["best_epoch"]
        log(epoch_line(progress["epochs"][-1], args.epochs, best, elapsed, args.max_minutes))
        if elapsed >= budget_s:
            raise TimeBudgetReached

    stopped_by = "max_epochs"
    spent = progress["fit_seconds"]
    if trainer.cur_step > trainer.stopping_step:
        stopped_by = "early_stopping"  # a finished run asked again: evaluate only
    elif spent >= budget_s:
        stopped_by = "time_budget"
    else:
        try:
            trainer.fit(
                train_data, valid_data, saved=False, show_progress=False, callback_fn=on_epoch
            )
            if len(progress["epochs"]) < args.epochs:
                stopped_by = "early_stopping"
        except TimeBudgetReached:
            stopped_by = (
                "early_stopping" if trainer.cur_step > trainer.stopping_step else "time_budget"
            )
    log(f"training stopped by {stopped_by} after {len(progress['epochs'])} epochs")
    if not progress["epochs"]:
        raise SystemExit("no epoch trained: raise --max-minutes")

    best = torch.load(best_file, map_location="cpu", weights_only=False)
    model.load_state_dict(best["state_dict"])
    model.load_other_parameter(best.get("other_parameter"))
    if best["epoch"] + 1 != progress["best_epoch"]:
        raise SystemExit(f"{best_file} is epoch {best['epoch'] + 1}, not the best epoch")

    t0 = time.perf_counter()
    trainer.model = model
    rb_test = recbole_result(trainer.evaluate(test_data, load_best_model=False))
    n_items = dataset.item_num
    test = score_ranks(
        model,
        test_data,
        history_ids(renamed, dataset, "test"),
        n_items,
        cold=cold_targets(renamed, dataset, "test"),
    )
    valid = score_ranks(model, valid_data, history_ids(renamed, dataset, "valid"), n_items)
    log(f"test evaluated in {time.perf_counter() - t0:.1f}s")
    best_record = progress["epochs"][progress["best_epoch"] - 1]
    epochs = progress["epochs"]

    result = {
        "peer": title,
        "row": args.row,
        "model": model_name,
        "train_stage": stage,
        "versions": {
            "recbole": recbole.__version__,
            "torch": torch.__version__,
            "numpy": np.__version__,
            "pandas": pandas.__version__,
            "python": platform.python_version(),
        },
        "code": str(args.code),
        "item_vectors": vectors_meta,
        "changed": {k: config[k] for k in changed},
        "config": {
            k: config[k]
            for k in (
                "hidden_size",
                "n_layers",
                "n_heads",
                "inner_size",
                "hidden_dropout_prob",
                "attn_dropout_prob",
                "MAX_ITEM_LIST_LENGTH",
                "loss_type",
                "learning_rate",
                "train_batch_size",
                "weight_decay",
                "stopping_step",
                "epochs",
                "seed",
                "eval_batch_size",
            )
        }
        | {"threads": threads, "max_minutes": args.max_minutes},
        "split": split_summary(split, args.split, args.users is not None),
        "split_verified": True,
        "split_check": verified,
        "epochs_trained": len(epochs),
        "best_epoch": progress["best_epoch"],
        "converged": stopped_by == "early_stopping",
        "seconds_per_epoch": round(float(np.mean([e["train_seconds"] for e in epochs])), 2),
        "valid_seconds_per_epoch": round(float(np.mean([e["valid_seconds"] for e in epochs])), 2),
        "train_seconds": progress["fit_seconds"],
        "invocations": progress["invocations"],
        "stopped_by": stopped_by,
        "valid": {
            "history_unmasked": valid["history_unmasked"],
            "history_masked": valid["history_masked"],
            "recbole_evaluator": best_record["valid"],
        },
        "test": {
            "history_unmasked": test["history_unmasked"],
            "history_masked": test["history_masked"],
            "cold_start": test["cold"],
            "recbole_evaluator": rb_test,
        },
        "crosscheck": {
            "what": "history_unmasked from full_sort_predict scores (ties against the target) vs "
            "RecBole's evaluator (torch.topk, 4 decimals)",
            "test": agreement(test["history_unmasked"], rb_test),
            "valid": agreement(valid["history_unmasked"], best_record["valid"]),
        },
        "epochs": epochs,
        "total_seconds": round(time.perf_counter() - t_start, 1),
        "shims": SHIMS,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_json(result, out)
    log(f"test (masked) {test['history_masked']}; wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
