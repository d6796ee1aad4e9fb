"""What every RecBole peer runner shares: the compatibility shims for RecBole 1.2.1 on numpy 2
and torch 2.13, reading and checking a `linkedout-split/1` directory, writing it as RecBole's
atomic files, verifying that RecBole's leave-one-out split is exactly ours, and ranking from a
model's `full_sort_predict` under both rules (history masked, as LinkedOut and MicroLens rank, and
not masked, as RecBole does). Runs in `.venv-peers` (see README.md), never the project's venv.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import os
import shutil
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

DATASET = "linkedout"  # RecBole dataset name: <work>/linkedout/linkedout.{inter,item}
MAX_LEN = 50
KS = (10, 20)
AGREE_TOL = 1e-4  # RecBole rounds metrics to 4 decimals (metric_decimal_place), so |diff| <= 5e-5
WORKDIR_MARKER = ".recbole-peer-workdir"

SHIMS: list[str] = []


LOG_PREFIX = ["recbole-peer"]
"""The runner's name on its progress lines (each runner sets it once)."""


def log(msg: str) -> None:
    print(f"[{LOG_PREFIX[0]}] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------
# Compatibility shims for RecBole 1.2.1 on numpy 2 / torch 2.13. All of them live here, each
# applied before RecBole runs and listed in the output JSON under "shims".
# ----------------------------------------------------------------------------------------------


def apply_shims() -> None:
    # numpy 2 removed np.float_/np.complex_/np.unicode_; RecBole's Config.compatibility_settings()
    # reads them to re-create np.float/np.int/... (which its evaluator then uses), and would raise.
    restored = []
    for old, new in (("float_", "float64"), ("complex_", "complex128"), ("unicode_", "str_")):
        if not hasattr(np, old):
            setattr(np, old, getattr(np, new))
            restored.append(f"np.{old}=np.{new}")
    if restored:
        SHIMS.append(
            "numpy 2: restored " + ", ".join(restored) + " (RecBole Config.compatibility_settings "
            "reads them to alias np.float/np.int/np.long..., which its evaluator uses)"
        )

    # torch.cuda.amp.GradScaler is deprecated (FutureWarning on every epoch); RecBole's trainer
    # still builds one each epoch (disabled on CPU). Silence that one message only.
    warnings.filterwarnings(
        "ignore", message=r".*torch\.cuda\.amp\.GradScaler.*", category=FutureWarning
    )
    SHIMS.append(
        "torch>=2.4: silenced the FutureWarning of torch.cuda.amp.GradScaler that RecBole's "
        "Trainer creates (disabled) every epoch"
    )
    # pandas 2.x warns (FutureWarning) that RecBole's Dataset._fill_nan, `feat[field].fillna(...,
    # inplace=True)`, stops working under pandas 3 copy-on-write; pandas is pinned <3 and the split
    # has no missing values to fill anyway, so the warning is noise.
    warnings.filterwarnings(
        "ignore", message=r".*chained assignment.*", category=FutureWarning, module=r"recbole\."
    )
    SHIMS.append(
        "pandas 2.x: silenced RecBole's chained-assignment fillna FutureWarning (pandas is pinned "
        "<3, where that fillna would silently do nothing; our split has no NaN to fill)"
    )

    import recbole.trainer.trainer as rb_trainer

    class _NoTensorboard:
        # Stands in for torch.utils.tensorboard.SummaryWriter: accepts and drops every call.
        def __getattr__(self, name):
            return lambda *args, **kwargs: None

    # RecBole's Trainer opens a tensorboard SummaryWriter under ./log_tensorboard (relative to the
    # current directory, i.e. it would litter the repo); the peer needs no event files.
    rb_trainer.get_tensorboard = lambda logger: _NoTensorboard()
    SHIMS.append(
        "no tensorboard: recbole.trainer.trainer.get_tensorboard returns a no-op writer "
        "(RecBole would write event files into ./log_tensorboard of the current directory)"
    )
    # torch>=2.6 defaults torch.load(weights_only=True), which refuses RecBole's checkpoints (they
    # pickle the Config object), so Trainer.evaluate(load_best_model=True) would fail. The runner
    # loads the best checkpoint itself (see load_best) and evaluates with load_best_model=False.
    SHIMS.append(
        "torch>=2.6 torch.load(weights_only=True) default: the runner loads RecBole's best "
        "checkpoint itself with weights_only=False (its own file) and calls "
        "Trainer.evaluate(load_best_model=False)"
    )


# ----------------------------------------------------------------------------------------------
# Split files
# ----------------------------------------------------------------------------------------------


class Split:
    """The split as handed to us: users in file order, each with its chronological item tokens."""

    def __init__(self, users: list[str], seqs: list[list[str]], items: list[str], meta: dict):
        self.users = users
        self.seqs = seqs
        self.items = items
        self.meta = meta


def _na_strings() -> set[str]:
    try:
        from pandas._libs.parsers import STR_NA_VALUES

        return set(STR_NA_VALUES)
    except ImportError:  # pragma: no cover - older/newer pandas layout
        return {"", "NA", "N/A", "NULL", "NaN", "nan", "null", "None", "n/a", "<NA>", "#N/A"}


def read_split(split_dir: Path, max_users: int | None) -> Split:
    meta = json.loads((split_dir / "split.json").read_text())
    if meta.get("format") != "linkedout-split/1":
        raise SystemExit(
            f"{split_dir}/split.json: format {meta.get('format')!r}, want linkedout-split/1"
        )
    users: list[str] = []
    seqs: list[list[str]] = []
    done: set[str] = set()
    with open(split_dir / "interactions.tsv", newline="", encoding="utf-8") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader)
        if header != ["user", "item", "position", "split"]:
            raise SystemExit(f"interactions.tsv header {header}, want user/item/position/split")
        labels: list[str] = []
        for lineno, row in enumerate(reader, start=2):
            if len(row) != 4:
                raise SystemExit(f"interactions.tsv:{lineno}: {len(row)} fields, want 4")
            user, item, pos, lab = row
            if not users or users[-1] != user:
                if users:
                    _check_labels(users[-1], labels)
                if user in done:
                    raise SystemExit(
                        f"interactions.tsv:{lineno}: rows of user {user!r} not contiguous"
                    )
                if max_users is not None and len(users) == max_users:
                    labels = []
                    break
                done.add(user)
                users.append(user)
                seqs.append([])
                labels = []
            if int(pos) != len(seqs[-1]):
                raise SystemExit(
                    f"interactions.tsv:{lineno}: user {user!r} position {pos}, want {len(seqs[-1])}"
                )
            seqs[-1].append(item)
            labels.append(lab)
        if labels:
            _check_labels(users[-1], labels)
    with open(split_dir / "items.tsv", newline="", encoding="utf-8") as f:
        lines = f.read().splitlines()
    if not lines or lines[0] != "item":
        raise SystemExit("items.tsv: header must be 'item'")
    items = lines[1:]
    if len(set(items)) != len(items):
        raise SystemExit("items.tsv: duplicate item ids")
    catalog = set(items)
    unknown = {i for s in seqs for i in s} - catalog
    if unknown:
        raise SystemExit(
            f"{len(unknown)} interacted items are not in items.tsv, e.g. {sorted(unknown)[:3]}"
        )
    # RecBole reads tokens with pandas.read_csv: ids that pandas parses as NaN, that hold a
    # separator or a quote, or that equal RecBole's padding token would change on the way.
    # Refuse them with a clear message (verify_split would catch them too).
    na = _na_strings() | {"[PAD]"}
    for kind, ids in (("user", users), ("item", items)):
        bad = [x for x in ids if x in na or any(c in x for c in '\t\n\r"')]
        if bad:
            raise SystemExit(f"{len(bad)} {kind} ids RecBole cannot read as tokens, e.g. {bad[:3]}")
    return Split(users, seqs, items, meta)


def _check_labels(user: str, labels: list[str]) -> None:
    n = len(labels)
    want = ["train"] * (n - 2) + ["valid", "test"]
    if n < 3 or labels != want:
        raise SystemExit(f"user {user!r}: split labels {labels}, want train*, valid, test (n>=3)")


def write_atomic(split: Split, data_dir: Path) -> None:
    data_dir.mkdir(parents=True)
    with open(data_dir / f"{DATASET}.inter", "w", encoding="utf-8") as f:
        f.write("user_id:token\titem_id:token\ttimestamp:float\n")
        for user, seq in zip(split.users, split.seqs):
            for pos, item in enumerate(seq):
                f.write(f"{user}\t{item}\t{pos}\n")
    # The .item file makes RecBole's item vocabulary exactly items.tsv (the ranking catalog),
    # including items nobody in this split interacted with.
    with open(data_dir / f"{DATASET}.item", "w", encoding="utf-8") as f:
        f.write("item_id:token\n")
        for item in split.items:
            f.write(f"{item}\n")


def split_digest(split_dir: Path) -> str:
    """sha256 of interactions.tsv, a NUL byte, then items.tsv: linkedout.recommend.split_files'
    digest, the "sha256" of split.json."""
    h = hashlib.sha256()
    for i, name in enumerate(("interactions.tsv", "items.tsv")):
        if i:
            h.update(b"\0")
        with open(split_dir / name, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------
# Split verification: RecBole's train/valid/test rows, mapped back to our ids, must be ours.
# ----------------------------------------------------------------------------------------------


class SplitMismatch(SystemExit):
    def __init__(self, message: str):
        super().__init__(f"RecBole's split differs from ours: {message}")


def _inverse(id_token: np.ndarray, what: str) -> dict[str, int]:
    tokens = [str(t) for t in id_token]
    if tokens[0] != "[PAD]" or len(set(tokens)) != len(tokens):
        raise SplitMismatch(f"RecBole's {what} vocabulary is not [PAD] + unique tokens")
    return {t: i for i, t in enumerate(tokens)}


def verify_split(split: Split, dataset, phases: dict) -> dict:
    """Checks, for every user, RecBole's targets and histories in every phase against the split.

    For each RecBole row (user u, target position p = its timestamp) the target must be our item
    at p, p must belong to the phase (train: 1..n-3, valid: n-2, test: n-1), the history RecBole
    feeds the model must be our items at max(0, p-50)..p-1 and each (u, p) must occur exactly
    once across phases, with every expected (u, p) present. Ids are mapped back through
    dataset.field2id_token. Raises SplitMismatch on any difference.
    """
    uid_tok = dataset.field2id_token["user_id"]
    iid_tok = dataset.field2id_token["item_id"]
    user_id = _inverse(uid_tok, "user")
    item_id = _inverse(iid_tok, "item")
    if set(item_id) - {"[PAD]"} != set(split.items):
        raise SplitMismatch(
            f"RecBole's items ({len(item_id) - 1}) are not items.tsv ({len(split.items)})"
        )
    if set(user_id) - {"[PAD]"} != set(split.users):
        raise SplitMismatch(
            f"RecBole's users ({len(user_id) - 1}) are not ours ({len(split.users)})"
        )

    # Our sequences in RecBole's internal ids, flattened per RecBole user id.
    n_users_rb = len(uid_tok)
    lengths = np.zeros(n_users_rb, dtype=np.int64)
    for user, seq in zip(split.users, split.seqs):
        lengths[user_id[user]] = len(seq)
    offsets = np.zeros(n_users_rb + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    flat = np.zeros(int(offsets[-1]), dtype=np.int64)
    for user, seq in zip(split.users, split.seqs):
        u = user_id[user]
        flat[offsets[u] : offsets[u + 1]] = [item_id[i] for i in seq]

    seen = np.zeros(len(flat), dtype=np.int64)  # how often each (user, position) is a target
    report = {}
    for phase, ds in phases.items():
        feat = ds.inter_feat
        u = feat["user_id"].numpy().astype(np.int64)
        target = feat["item_id"].numpy().astype(np.int64)
        ts = feat["timestamp"].numpy().astype(np.float64)
        pos = np.rint(ts).astype(np.int64)
        hist = feat["item_id_list"].numpy().astype(np.int64)
        hlen = feat["item_length"].numpy().astype(np.int64)
        n = lengths[u]
        if np.any(pos != ts) or np.any(pos < 0) or np.any(pos >= n):
            raise SplitMismatch(f"{phase}: RecBole rows with timestamps that are no position")
        ok_pos = {"train": (pos >= 1) & (pos <= n - 3), "valid": pos == n - 2, "test": pos == n - 1}
        bad = ~ok_pos[phase]
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise SplitMismatch(
                f"{phase}: {int(bad.sum())} RecBole targets at the wrong position, e.g. user "
                f"{str(uid_tok[u[i]])!r} position {pos[i]} of {n[i]} (RecBole's leave-one-out "
                "gives users with 3 interactions no valid target)"
            )
        flat_idx = offsets[u] + pos
        if np.any(flat[flat_idx] != target):
            i = int(np.flatnonzero(flat[flat_idx] != target)[0])
            raise SplitMismatch(
                f"{phase}: target differs for user {str(uid_tok[u[i]])!r} at position {pos[i]}: "
                f"RecBole {str(iid_tok[target[i]])!r}"
            )
        np.add.at(seen, flat_idx, 1)
        # History: RecBole left-aligns the last min(p, 50) items and pads with 0 after them.
        want_len = np.minimum(pos, MAX_LEN)
        if hist.shape[1] != MAX_LEN or np.any(hlen != want_len):
            raise SplitMismatch(f"{phase}: history lengths differ from min(position, {MAX_LEN})")
        cols = np.arange(MAX_LEN)
        inside = cols[None, :] < want_len[:, None]
        src = np.where(inside, (flat_idx - want_len)[:, None] + cols[None, :], 0)
        want_hist = np.where(inside, flat[src], 0)
        if np.any(hist != want_hist):
            i = int(np.flatnonzero((hist != want_hist).any(axis=1))[0])
            raise SplitMismatch(
                f"{phase}: history differs for user {str(uid_tok[u[i]])!r} before position {pos[i]}"
            )
        report[phase] = len(u)

    # Every (user, position >= 1) is a target exactly once; position 0 never (it has no history).
    first = offsets[:-1][lengths > 0]
    expected = np.ones(len(flat), dtype=np.int64)
    expected[first] = 0
    if np.any(seen != expected):
        k = int(np.sum(seen != expected))
        raise SplitMismatch(f"{k} (user, position) targets missing or repeated across phases")
    n_users = len(split.users)
    if report["valid"] != n_users or report["test"] != n_users:
        raise SplitMismatch(f"valid/test rows {report['valid']}/{report['test']}, users {n_users}")
    return {"rows": report, "users": n_users, "items": len(split.items)}


# ----------------------------------------------------------------------------------------------
# Scoring from model.full_sort_predict: both ranking rules, our tie rule.
# ----------------------------------------------------------------------------------------------


def history_ids(split: Split, dataset, phase: str) -> dict[int, np.ndarray]:
    """RecBole user id -> RecBole ids of every item before the phase's target (not truncated)."""
    user_id = _inverse(dataset.field2id_token["user_id"], "user")
    item_id = _inverse(dataset.field2id_token["item_id"], "item")
    cut = 2 if phase == "valid" else 1
    return {
        user_id[user]: np.array([item_id[i] for i in seq[:-cut]], dtype=np.int64)
        for user, seq in zip(split.users, split.seqs)
    }


class RankMetrics:
    def __init__(self):
        self.n = 0
        self.sums = {f"{m}@{k}": 0.0 for k in KS for m in ("HR", "NDCG")}

    def add(self, ranks: torch.Tensor) -> None:
        ranks = ranks.double()
        self.n += len(ranks)
        for k in KS:
            hit = ranks <= k
            self.sums[f"HR@{k}"] += float(hit.sum())
            self.sums[f"NDCG@{k}"] += float((hit / torch.log2(ranks + 1)).sum())

    def result(self) -> dict[str, float]:
        order = [f"{m}@{k}" for k in KS for m in ("HR", "NDCG")]
        return {key: round(self.sums[key] / max(self.n, 1), 6) for key in order}


@torch.no_grad()
def score_ranks(
    model,
    eval_data,
    histories: dict[int, np.ndarray],
    n_items: int,
    cold: set[int] | None = None,
) -> dict:
    """Ranks each row's target among all catalog items (RecBole ids 1..n_items-1; [PAD] is no
    candidate). rank = 1 + #other candidates scoring >= target; masked rule drops history items.
    With `cold` (RecBole ids of items no training interaction holds), also the masked figures
    of the rows whose target is one of them, LinkedOut's cold-start slice.
    """
    model.eval()
    unmasked, masked, cold_masked = RankMetrics(), RankMetrics(), RankMetrics()
    cold_ids = torch.tensor(sorted(cold or ()), dtype=torch.long)
    for batch in eval_data:
        interaction = batch[0]
        scores = model.full_sort_predict(interaction).view(-1, n_items).float()
        scores = torch.nan_to_num(scores, nan=-math.inf, posinf=math.inf, neginf=-math.inf)
        targets = interaction["item_id"].long()
        rows = torch.arange(len(targets))
        target_scores = scores[rows, targets].unsqueeze(1)
        above = scores >= target_scores
        above[:, 0] = False  # [PAD]
        above[rows, targets] = False  # the target does not outrank itself
        unmasked.add(above.sum(dim=1) + 1)
        hist = [histories[int(u)] for u in interaction["user_id"]]
        r = np.repeat(np.arange(len(hist)), [len(h) for h in hist])
        c = np.concatenate(hist) if hist else np.zeros(0, dtype=np.int64)
        above[torch.from_numpy(r), torch.from_numpy(c)] = False
        above[rows, targets] = False
        ranks = above.sum(dim=1) + 1
        masked.add(ranks)
        if cold is not None:
            cold_masked.add(ranks[torch.isin(targets, cold_ids)])
    out = {
        "history_unmasked": unmasked.result(),
        "history_masked": masked.result(),
        "n": unmasked.n,
    }
    if cold is not None:
        out["cold"] = {**cold_masked.result(), "targets": cold_masked.n}
    return out


def recbole_result(result) -> dict[str, float]:
    names = {"hit": "HR", "ndcg": "NDCG"}
    out = {}
    for k in KS:
        for m in ("hit", "ndcg"):
            out[f"{names[m]}@{k}"] = float(result[f"{m}@{k}"])
    return out


def agreement(mine: dict[str, float], theirs: dict[str, float]) -> dict:
    diff = max(abs(mine[k] - theirs[k]) for k in theirs)
    return {
        "agree": bool(diff <= AGREE_TOL),
        "max_abs_diff": round(diff, 6),
        "tolerance": AGREE_TOL,
    }


# ----------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------


class TimeBudgetReached(Exception):
    pass


def prepare_workdir(out: Path, keep: bool = False) -> Path:
    """The work dir beside `out` (`OUT.recbole-work`): emptied unless `keep` (a run resuming
    from its checkpoints), since RecBole would silently reload stale datasets and checkpoints."""
    work = out.parent / f"{out.stem}.recbole-work"
    if work.exists():
        if not (work / WORKDIR_MARKER).exists() and not (work / ".recbole-sasrec-workdir").exists():
            raise SystemExit(f"{work} exists and is not a work dir of these runners; remove it")
        if keep:
            return work
        shutil.rmtree(work)
    work.mkdir(parents=True)
    (work / WORKDIR_MARKER).write_text("a RecBole peer runner's work dir (benchmarks/peers)\n")
    # The work dir holds a copy of the interactions (e.g. MicroLens): never let git pick it up.
    (work / ".gitignore").write_text("*\n")
    return work


# ----------------------------------------------------------------------------------------------
# What every runner sets the same way, and how it times RecBole's epochs.
# ----------------------------------------------------------------------------------------------


def base_config(work: Path, stopping_step: int, epochs: int, seed: int) -> dict:
    """RecBole settings every runner shares: our split read as RecBole's leave-one-out of one
    time-ordered file, nothing filtered, full ranking, validation on NDCG@10 every epoch, CPU,
    no logging to files."""
    return {
        "data_path": str(work),
        "checkpoint_dir": str(work / "saved"),
        "USER_ID_FIELD": "user_id",
        "ITEM_ID_FIELD": "item_id",
        "TIME_FIELD": "timestamp",
        "encoding": "utf-8",  # RecBole opens atomic files with config["encoding"] (else locale)
        "load_col": {"inter": ["user_id", "item_id", "timestamp"], "item": ["item_id"]},
        # Keep every user, item and interaction we hand over.
        "rm_dup_inter": None,
        "val_interval": None,
        "filter_inter_by_user_or_item": False,
        "user_inter_num_interval": None,
        "item_inter_num_interval": None,
        "train_neg_sample_args": None,  # CE loss over all items: RecBole requires no sampling
        "eval_args": {
            "split": {"LS": "valid_and_test"},
            "order": "TO",
            "mode": "full",
            "group_by": "user",
        },
        "metrics": ["Hit", "NDCG"],
        "topk": list(KS),
        "valid_metric": "NDCG@10",
        "valid_metric_bigger": True,
        "stopping_step": stopping_step,
        "eval_step": 1,
        "epochs": epochs,
        "seed": seed,
        "reproducibility": True,
        "use_gpu": False,
        "gpu_id": "",
        "show_progress": False,
        "save_dataset": False,
        "save_dataloaders": False,
        "log_wandb": False,
        "worker": 0,
    }


class EpochTimer:
    """Wraps a RecBole trainer's `_train_epoch` and `_valid_epoch`: seconds of each, and each
    validation's metrics, for the runner's epoch callback."""

    def __init__(self, trainer):
        self.train_times: list[float] = []
        self.valid_times: list[float] = []
        self.valid_results: list[dict] = []
        train, valid = trainer._train_epoch, trainer._valid_epoch

        def timed_train(*a, **k):
            t0 = time.perf_counter()
            loss = train(*a, **k)
            self.train_times.append(time.perf_counter() - t0)
            return loss

        def timed_valid(*a, **k):
            t0 = time.perf_counter()
            score, result = valid(*a, **k)
            self.valid_times.append(time.perf_counter() - t0)
            self.valid_results.append(recbole_result(result))
            return score, result

        trainer._train_epoch, trainer._valid_epoch = timed_train, timed_valid

    def record(self, epoch_idx: int, loss: float) -> dict:
        """The epoch just validated, as the runners' JSON lists it."""
        return {
            "epoch": epoch_idx + 1,
            "train_loss": round(float(loss), 4),
            "train_seconds": round(self.train_times[-1], 2),
            "valid_seconds": round(self.valid_times[-1], 2),
            "valid": self.valid_results[-1],
        }


def epoch_line(record: dict, epochs: int, best: int, elapsed: float, budget_minutes: float) -> str:
    """One progress line for an epoch `record` (EpochTimer.record)."""
    v = record["valid"]
    return (
        f"epoch {record['epoch']}/{epochs}: loss {record['train_loss']:.4f}, train "
        f"{record['train_seconds']:.1f}s, valid {record['valid_seconds']:.1f}s, valid NDCG@10 "
        f"{v['NDCG@10']:.4f} HR@10 {v['HR@10']:.4f} (best epoch {best}, elapsed "
        f"{elapsed / 60:.1f}/{budget_minutes:g} min)"
    )


def make_config(config_class, cwd: Path | None = None, **kwargs):
    """RecBole's `Config(**kwargs)`, which also parses sys.argv (`--key=value` overrides any
    setting): our own arguments are hidden from it. `cwd`: where relative config files are."""
    saved_argv, saved_cwd = sys.argv, Path.cwd()
    sys.argv = sys.argv[:1]
    if cwd is not None:
        os.chdir(cwd)
    try:
        config = config_class(**kwargs)
    finally:
        sys.argv = saved_argv
        os.chdir(saved_cwd)
    if str(config["device"]) != "cpu":
        raise SystemExit(f"RecBole picked device {config['device']}, want cpu")
    return config


def prepare_verified(config, dataset, split: Split, t_start: float) -> tuple:
    """RecBole's train, valid and test loaders of `dataset`, after checking that their rows are
    exactly our split's (`verify_split`); also that check's report."""
    from recbole.data import data_preparation

    train_data, valid_data, test_data = data_preparation(config, dataset)
    log(
        f"RecBole dataset built in {time.perf_counter() - t_start:.1f}s: {dataset.user_num - 1} "
        f"users, {dataset.item_num - 1} items, {dataset.inter_num} rows"
    )
    verified = verify_split(
        split,
        dataset,
        {"train": train_data._dataset, "valid": valid_data._dataset, "test": test_data._dataset},
    )
    log(f"split verified: RecBole's train/valid/test rows {verified['rows']} equal ours")
    return train_data, valid_data, test_data, verified


def peer_arguments(description: str, budget_minutes: float) -> argparse.ArgumentParser:
    """The arguments every runner takes; each adds its own."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--split", type=Path, required=True, help="linkedout-split/1 directory")
    p.add_argument("--out", type=Path, required=True, help="result JSON (work dir goes beside it)")
    p.add_argument("--epochs", type=int, default=300, help="max epochs (RecBole's default 300)")
    p.add_argument(
        "--max-minutes", type=float, default=budget_minutes, help="training budget (train + valid)"
    )
    p.add_argument("--seed", type=int, default=2020, help="RecBole seed (its default 2020)")
    p.add_argument(
        "--stopping-step",
        type=int,
        default=10,
        help="epochs without a better validation NDCG@10 before stopping (RecBole's default 10)",
    )
    p.add_argument("--users", type=int, default=None, help="only the first N users (smoke test)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    p.add_argument(
        "--verify-only", action="store_true", help="build and verify RecBole's split, no training"
    )
    return p


def check_arguments(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if (
        args.epochs < 1
        or args.max_minutes <= 0
        or args.stopping_step < 1
        or (args.users is not None and args.users < 1)
    ):
        p.error("--epochs, --max-minutes, --stopping-step and --users must be positive")


def split_summary(split: Split, split_dir: Path, subset: bool) -> dict:
    """The result JSON's `split`: which split, verified against its digest, how much of it."""
    return {
        "dir": str(split_dir.resolve()),
        "sha256": split.meta.get("sha256"),
        "sha256_matches_files": True,
        "users": len(split.users),
        "users_in_split": split.meta.get("users"),
        "subset": subset and len(split.users) < int(split.meta.get("users", 0)),
        "items": len(split.items),
        "interactions": sum(len(s) for s in split.seqs),
    }
