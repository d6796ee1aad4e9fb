"""Whether a finished benchmark run may be reused: the same command is not enough, since a
changed default (a new `--expert-dim`, `--new-item-lift`, weight decay) trains another model
from the same command line. A run is reused only when every setting the command leaves to its
default was, in the run's own config.json, the default of the code running now."""

from __future__ import annotations

import json
from dataclasses import MISSING, fields, is_dataclass
from pathlib import Path

from linkedout.recommend.config import TrainConfig
from linkedout.recommend.resume import NO_EFFECT

NOT_SETTINGS = {"features", "interactions"} | NO_EFFECT
"""Fields that say where data is, or change neither the data nor the numbers (what a resume
may change too), not what is trained."""

APPLIES = {
    # Lifts items without a trained ID vector among items with one: only content + IDs.
    "model.new_item_lift": lambda train: (
        train["model"]["ids"] and train["model"]["fusion"] != "none"
    ),
}
"""Settings that change nothing for some runs (a changed default there is no reason to
retrain), by the run's recorded config."""


def stale_defaults(run: Path, command: list[str]) -> list[str]:
    """`setting: recorded -> now` for each default the run was trained with that the code
    now has otherwise (empty: reusable). `command` is the run's `linkedout train` argv."""
    named = {arg[2:].split("=")[0].replace("-", "_") for arg in command if arg.startswith("--")}
    recorded = json.loads((run / "config.json").read_text())["train"]
    changed = _compare(TrainConfig, recorded, named, "")
    return [c for c in changed if APPLIES.get(c.split(":")[0], lambda _: True)(recorded)]


def _compare(cls: type, recorded: dict, named: set[str], prefix: str) -> list[str]:
    changed = []
    for f in fields(cls):
        if f.name in NOT_SETTINGS or f.name in named:
            continue
        if f.default_factory is not MISSING and is_dataclass(nested := f.default_factory()):
            changed += _compare(type(nested), recorded.get(f.name, {}), named, f"{f.name}.")
            continue
        if f.default is not MISSING:
            default = f.default
        elif f.default_factory is not MISSING:
            default = f.default_factory()
        else:
            continue  # required, so always named
        now = json.loads(json.dumps(default))  # as config.json writes it (tuples as lists)
        if recorded.get(f.name, MISSING) != now:
            was = recorded.get(f.name, "absent")
            changed.append(f"{prefix}{f.name}: {was} -> {now}")
    return changed
