"""What `linkedout train` may do with its --out (`plan_out_dir`): start afresh, resume an
unfinished run of the same settings from checkpoints/last.ckpt (a killed run, or one Ctrl-C
finished early from its best checkpoint so far), or refuse in one line before
anything is written (a file, a folder of other files, a finished run, an unfinished run of other
settings or data). Plain Python: the CLI checks --out before it loads Lightning.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

from linkedout.errors import LinkedOutError, SettingError
from linkedout.recommend.checkpoints import checkpoint_run_id, read_checkpoint
from linkedout.recommend.config import TrainConfig
from linkedout.recommend.run import RunConfig, RunDir
from linkedout.recommend.run_lock import RunLock


@dataclass
class Plan:
    """What `train` does with its --out: start afresh or resume, under which run id."""

    run_id: str
    resume: Path | None = None
    """checkpoints/last.ckpt to continue from."""
    start_epoch: int = 0
    """The first epoch a resumed run trains."""
    previous: RunConfig | None = None
    """config.json of the unfinished run found there."""
    fitted: bool = False
    """The last checkpoint is the end of training (early stopping or --epochs): only the
    catalog and metrics are left to write."""
    clean: list[Path] = field(default_factory=list)
    """Files of an unfinished run that never reached its first checkpoint: started over."""


NO_EFFECT = frozenset({"out", "quiet", "storage_options", "feature_memory_gb", "catalog_features"})
"""Settings an unfinished run may be resumed with other values of: they change neither the
data nor the numbers (feature_memory_gb only where features live, with the same results)."""


def plan_out_dir(config: TrainConfig, run: RunDir, lock: RunLock | None = None) -> Plan:
    """Where `train` may write: a new or empty folder, or an unfinished run of the same
    settings (resumed); anything else is one line, before anything is written. `lock`: this
    process's lock on the run, once taken."""
    path = run.path
    if path.exists() and not path.is_dir():
        raise LinkedOutError(
            f"--out {path} is a file: give the path of a new folder for the run directory"
        )
    if not path.exists():
        return Plan(run_id=new_run_id())
    (lock or RunLock(run.lock_file)).refuse_if_held()
    ours = {run.lock_file.name}
    entries = [e for e in path.iterdir() if e.name not in ours and ".stale-" not in e.name]
    if not entries:
        return Plan(run_id=new_run_id())
    if not run.config_file.exists():
        raise LinkedOutError(
            f"{path} exists and is not a linkedout run directory (it holds "
            f"{_sample(entries)} and no config.json): choose a new --out"
        )
    if run.is_finished() and not run.continues():
        raise LinkedOutError(f"{path} already holds a trained run: choose a new --out")
    try:
        previous = run.config()
    except LinkedOutError as e:
        raise LinkedOutError(
            f"{path} holds an unfinished run that cannot be resumed ({e}): choose a new --out"
        ) from None
    _refuse_other_settings(run, previous.train, jsonable(asdict(config)))
    run_id = previous.run_id or new_run_id()
    if not run.last_checkpoint.exists():
        # Stopped before its first epoch ended: nothing to resume, start it over.
        stale = [run.checkpoint_dir, run.epochs_file, run.logs_dir, run.catalog_file]
        stale += [run.gates_file, *path.glob("validation-catalog-rank*.lance")]
        return Plan(run_id=run_id, previous=previous, clean=[p for p in stale if p.exists()])
    saved = read_checkpoint(run.last_checkpoint, mmap=True)  # epoch and callbacks only: mapped
    if previous.run_id is not None:
        run.check_run_id(run.last_checkpoint, checkpoint_run_id(saved), previous.run_id)
    return Plan(
        run_id,
        run.last_checkpoint,
        int(saved.get("epoch", -1)) + 1,
        previous,
        fitted=_fit_ended(saved, config),
    )


def _refuse_other_settings(run: RunDir, stored: dict, current: dict) -> None:
    current = json.loads(json.dumps(current))  # the values config.json would hold
    diffs = [
        (name, old, new)
        for name, old, new in _flat_differences(stored, current)
        if name.split(".")[0] not in NO_EFFECT
    ]
    if not diffs:
        return
    name, old, new = diffs[0]
    also = ", ".join(f"`{n.split('.')[-1]}` {o!r}" for n, o, _ in diffs[1:])
    raise SettingError(
        name.split(".")[-1],
        new,
        f"the unfinished run in {run.path} was trained with {old!r}"
        + (f" (and {also})" if also else "")
        + ": repeat its settings to resume it, or choose a new --out",
    )


def _flat_differences(old, new, prefix: str = "") -> list[tuple[str, object, object]]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new)):
            out += _flat_differences(old.get(key), new.get(key), f"{prefix}{key}.")
        return out
    return [] if old == new else [(prefix.rstrip("."), old, new)]


def _fit_ended(saved: dict, config: TrainConfig) -> bool:
    """Whether the checkpoint was saved at the end of training: its epoch was the last one,
    or early stopping had decided to stop."""
    if int(saved.get("epoch", -1)) + 1 >= config.epochs:
        return True
    for key, state in (saved.get("callbacks") or {}).items():
        if str(key).startswith("EarlyStopping") and isinstance(state, dict):
            wait = int(state.get("wait_count", 0))
            return wait > 0 and wait >= int(state.get("patience", config.patience))
    return False


def _sample(entries: list[Path]) -> str:
    names = sorted(e.name for e in entries)
    shown = ", ".join(names[:3])
    return shown + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def new_run_id() -> str:
    return str(uuid.uuid4())


def refuse_other_data(run: RunDir, previous: RunConfig, now: RunConfig) -> None:
    for name in ("features_version", "manifest", "layers", "split", "softmax"):
        old, new = getattr(previous, name), json.loads(json.dumps(getattr(now, name)))
        if old != new:
            shown = f" ({old} there, {new} now)" if name == "features_version" else ""
            raise LinkedOutError(
                f"{run.path} holds an unfinished run of other data: its {name} differs{shown} "
                "(the features or interactions changed since it started): choose a new --out"
            )


EARLIER_LOGS = "metrics-before-resume.csv"


def set_aside_earlier_logs(run: RunDir, start_epoch: int) -> None:
    """Lightning's CSV logger starts logs/metrics.csv afresh: the rows of the epochs before
    the resumed one are set aside, and put back in front when training ends (and kept for the
    next resume if it does not)."""
    earlier = run.logs_dir / EARLIER_LOGS
    rows = _csv_rows(earlier) + _csv_rows(run.logs_dir / "metrics.csv")
    rows = [r for r in rows if _epoch_of(r) is not None and _epoch_of(r) < start_epoch]
    _write_csv(earlier, rows)


def restore_earlier_logs(run: RunDir) -> None:
    earlier = run.logs_dir / EARLIER_LOGS
    if earlier.exists():
        _write_csv(
            run.logs_dir / "metrics.csv",
            _csv_rows(earlier) + _csv_rows(run.logs_dir / "metrics.csv"),
        )
        earlier.unlink()


def _csv_rows(path: Path) -> list[dict]:
    import csv

    try:
        with open(path, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))
    except (OSError, csv.Error):
        return []


def _epoch_of(row: dict) -> int | None:
    try:
        return int(row.get("epoch") or "")
    except ValueError:
        return None


def _write_csv(path: Path, rows: list[dict]) -> None:
    import csv

    names: dict[str, None] = {}
    for row in rows:
        names.update(dict.fromkeys(k for k in row if k is not None))
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    with open(partial, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(names), restval="", extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(partial, path)


def jsonable(value):
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value if isinstance(value, (str, int, float, bool, type(None))) else str(value)
