"""Peer baseline: RecBole 1.2.1's SASRec trained and evaluated on a LinkedOut split.

Runs in its own environment (.venv-peers, built by benchmarks/peers/setup.sh), never the project's:

    .venv-peers/bin/python benchmarks/peers/recbole_sasrec.py --split DIR --out FILE.json \\
        [--epochs N] [--max-minutes M] [--seed S] [--users N] [--threads T]

Reads a `linkedout-split/1` directory (interactions.tsv, items.tsv, split.json), writes it as a
RecBole atomic dataset in a work dir beside --out, checks that RecBole's leave-one-out split is
exactly ours (every user's train/valid/test targets and the histories it feeds the model), trains
SASRec with our hyperparameters under a wall-clock budget, and reports test HR/NDCG@{10,20}
under RecBole's rule (history not masked) and under ours (earlier items masked). See README.md.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from recbole_common import (  # noqa: E402
    DATASET,
    LOG_PREFIX,
    MAX_LEN,
    SHIMS,
    EpochTimer,
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

LOG_PREFIX[0] = "recbole-sasrec"

# Hyperparameters matched to LinkedOut's own SASRec (everything else stays RecBole's default).
MODEL_CONFIG = {
    "hidden_size": 64,
    "n_layers": 2,
    "n_heads": 2,
    "inner_size": 128,
    "hidden_dropout_prob": 0.2,
    "attn_dropout_prob": 0.2,
    "hidden_act": "gelu",
    "MAX_ITEM_LIST_LENGTH": MAX_LEN,
    "loss_type": "CE",
    "learning_rate": 1e-3,
    "train_batch_size": 256,
}


def main(argv: list[str] | None = None) -> int:
    p = peer_arguments(__doc__.split("\n\n")[0], budget_minutes=40.0)
    p.add_argument(
        "--reuse",
        action="store_true",
        help="do nothing when --out already holds a full run on this split (make benchmark-peers)",
    )
    p.add_argument(
        "--keep-anomaly-detection",
        action="store_true",
        help="leave on the autograd anomaly detection RecBole's sine.py enables (stock speed)",
    )
    args = p.parse_args(argv)
    check_arguments(p, args)

    if args.reuse and args.out.exists() and args.users is None:
        done = json.loads(args.out.read_text())
        recorded = json.loads((args.split / "split.json").read_text()).get("sha256")
        if done["split"]["sha256"] == recorded and not done["split"]["subset"]:
            log(f"{args.out} holds a run on this split already (--reuse): nothing to do")
            return 0
    threads = args.threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="[recbole] %(message)s")
    apply_shims()

    import pandas
    import recbole
    from recbole.config import Config
    from recbole.data import create_dataset
    from recbole.utils import get_model, get_trainer, init_seed

    t_start = time.perf_counter()
    out = args.out.resolve()
    work = prepare_workdir(out)
    split = read_split(args.split, args.users)
    digest, recorded = split_digest(args.split), split.meta.get("sha256")
    if digest != recorded:
        raise SystemExit(f"{args.split}: the files' sha256 {digest} is not split.json's {recorded}")
    n_inter = sum(len(s) for s in split.seqs)
    log(f"split {args.split}: {len(split.users)} users, {len(split.items)} items, {n_inter} rows")
    write_atomic(split, work / DATASET)

    config_dict = {
        **MODEL_CONFIG,
        **base_config(work, args.stopping_step, args.epochs, args.seed),
    }
    config = make_config(Config, model="SASRec", dataset=DATASET, config_dict=config_dict)
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    train_data, valid_data, test_data, verified = prepare_verified(config, dataset, split, t_start)
    if args.verify_only:
        return 0

    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    # Importing recbole.model.sequential_recommender runs sine.py, whose module level calls
    # torch.autograd.set_detect_anomaly(True) for the whole process: a debug mode that records a
    # stack trace per op and NaN-checks every gradient (~2x slower epoch on CPU). It changes no
    # value (RecBole's Trainer still stops on a NaN loss), so it is switched off unless asked.
    if torch.is_anomaly_enabled() and not args.keep_anomaly_detection:
        torch.autograd.set_detect_anomaly(False)
        SHIMS.append(
            "anomaly detection off: importing RecBole's sequential models runs sine.py, which "
            "calls torch.autograd.set_detect_anomaly(True) process-wide (a ~2x slower debug mode "
            "that changes no value); --keep-anomaly-detection keeps RecBole's stock behaviour"
        )
    anomaly_detection = torch.is_anomaly_enabled()

    # Time RecBole's own epoch functions; stop via fit's callback once the budget is spent.
    epochs: list[dict] = []
    timer = EpochTimer(trainer)
    budget_s = args.max_minutes * 60.0
    best_epoch = 0
    t_fit = time.perf_counter()

    def on_epoch(epoch_idx: int, valid_score: float) -> None:
        nonlocal best_epoch
        if trainer.cur_step == 0:  # RecBole's early_stopping just took this epoch as the best
            best_epoch = epoch_idx + 1
        elapsed = time.perf_counter() - t_fit
        epochs.append(timer.record(epoch_idx, trainer.train_loss_dict[epoch_idx]))
        log(epoch_line(epochs[-1], args.epochs, best_epoch, elapsed, args.max_minutes))
        if elapsed >= budget_s:
            raise TimeBudgetReached

    stopped_by = "max_epochs"
    try:
        trainer.fit(train_data, valid_data, saved=True, show_progress=False, callback_fn=on_epoch)
        if len(epochs) < args.epochs:
            stopped_by = "early_stopping"
    except TimeBudgetReached:
        # fit() checks early stopping after the callback: report it if it would have stopped too.
        stopped_by = "early_stopping" if trainer.cur_step > trainer.stopping_step else "time_budget"
    train_seconds = time.perf_counter() - t_fit
    log(f"training stopped by {stopped_by} after {len(epochs)} epochs ({train_seconds:.0f}s)")

    # Best checkpoint (weights_only=False: RecBole pickles its Config; it is our own file).
    ckpt = torch.load(trainer.saved_model_file, map_location="cpu", weights_only=False)
    model.load_state_dict(ckpt["state_dict"])
    model.load_other_parameter(ckpt.get("other_parameter"))
    if ckpt["epoch"] + 1 != best_epoch:
        raise SystemExit(f"checkpoint epoch {ckpt['epoch'] + 1} is not the best epoch {best_epoch}")

    t0 = time.perf_counter()
    rb_test = recbole_result(trainer.evaluate(test_data, load_best_model=False))
    n_items = dataset.item_num
    test = score_ranks(model, test_data, history_ids(split, dataset, "test"), n_items)
    valid = score_ranks(model, valid_data, history_ids(split, dataset, "valid"), n_items)
    log(f"test evaluated in {time.perf_counter() - t0:.1f}s")
    rb_valid = timer.valid_results[best_epoch - 1]

    result = {
        "peer": "RecBole SASRec",
        "versions": {
            "recbole": recbole.__version__,
            "torch": torch.__version__,
            "numpy": np.__version__,
            "pandas": pandas.__version__,
            "python": platform.python_version(),
        },
        "config": {
            **{k: config[k] for k in MODEL_CONFIG},
            "layer_norm_eps": config["layer_norm_eps"],
            "initializer_range": config["initializer_range"],
            "learner": config["learner"],
            "weight_decay": config["weight_decay"],
            "epochs": config["epochs"],
            "max_minutes": args.max_minutes,
            "eval_args": config["eval_args"],
            "metrics": config["metrics"],
            "topk": config["topk"],
            "valid_metric": config["valid_metric"],
            "stopping_step": config["stopping_step"],
            "eval_batch_size": config["eval_batch_size"],
            "seed": config["seed"],
            "device": str(config["device"]),
            "threads": threads,
            "autograd_anomaly_detection": anomaly_detection,
            "user_inter_num_interval": config["user_inter_num_interval"],
            "item_inter_num_interval": config["item_inter_num_interval"],
            "rm_dup_inter": config["rm_dup_inter"],
        },
        "split": split_summary(split, args.split, args.users is not None),
        "split_verified": True,
        "split_check": verified,
        "epochs_trained": len(epochs),
        "best_epoch": best_epoch,
        "seconds_per_epoch": round(float(np.mean(timer.train_times)), 2),
        "valid_seconds_per_epoch": round(float(np.mean(timer.valid_times)), 2),
        "train_seconds": round(train_seconds, 1),
        "stopped_by": stopped_by,
        "valid": {
            "history_unmasked": valid["history_unmasked"],
            "history_masked": valid["history_masked"],
            "recbole_evaluator": rb_valid,
        },
        "test": {
            "history_unmasked": test["history_unmasked"],
            "history_masked": test["history_masked"],
            "recbole_evaluator": rb_test,
        },
        "crosscheck": {
            "what": "history_unmasked from full_sort_predict scores (ties against the target) vs "
            "RecBole's evaluator (torch.topk, 4 decimals)",
            "test": agreement(test["history_unmasked"], rb_test),
            "valid": agreement(valid["history_unmasked"], rb_valid),
        },
        "epochs": epochs,
        "total_seconds": round(time.perf_counter() - t_start, 1),
        "shims": SHIMS,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    tmp.replace(out)
    log(f"test (masked) {test['history_masked']}; wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
