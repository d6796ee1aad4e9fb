"""A finished benchmark run is reused only while the defaults it was trained with are still the
defaults: the same command line under a changed default trains another model."""

from __future__ import annotations

import json
from dataclasses import asdict

from benchmarks.run_reuse import stale_defaults
from linkedout.recommend.config import ModelConfig, SplitConfig, TrainConfig

COMMAND = ["train", "--features", "f.lance", "--out", "run", "--fusion", "moe", "--ids"]


def _run(tmp_path, **model):
    config = TrainConfig(features="f.lance", interactions="p.tsv", out="run")
    train = asdict(config)
    train["model"] = {**train["model"], "fusion": "moe", "ids": True, **model}
    (tmp_path / "config.json").write_text(json.dumps({"train": train}))
    return tmp_path


def test_a_run_of_todays_defaults_is_reused(tmp_path):
    assert stale_defaults(_run(tmp_path), COMMAND) == []


def test_a_default_that_changed_since_is_named(tmp_path):
    run = _run(tmp_path, expert_dim=ModelConfig.expert_dim * 2)
    assert stale_defaults(run, COMMAND) == [
        f"model.expert_dim: {ModelConfig.expert_dim * 2} -> {ModelConfig.expert_dim}"
    ]


def test_a_setting_the_command_names_is_not_a_default(tmp_path):
    run = _run(tmp_path, expert_dim=4)
    assert stale_defaults(run, [*COMMAND, "--expert-dim=4"]) == []


def test_a_setting_added_since_counts_only_where_it_applies(tmp_path):
    config = json.loads(_run(tmp_path).joinpath("config.json").read_text())
    del config["train"]["model"]["new_item_lift"]
    del config["train"]["split"]["min_interactions"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    changed = stale_defaults(tmp_path, COMMAND)
    assert changed == [
        f"model.new_item_lift: absent -> {ModelConfig.new_item_lift}",
        f"split.min_interactions: absent -> {SplitConfig.min_interactions}",
    ]
    config["train"]["model"]["ids"] = False  # content only: nothing to lift
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert stale_defaults(tmp_path, COMMAND) == changed[1:]
