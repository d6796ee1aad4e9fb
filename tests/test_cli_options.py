"""The config dataclasses are the one source of the commands' options: names, help, defaults,
choices and the errors that name them."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import typer
import typer.main
from typer.testing import CliRunner

from linkedout.cli import app
from linkedout.cli_options import options, options_from
from linkedout.errors import SettingError
from linkedout.extract.config import ExtractConfig, RayOptions
from linkedout.recommend.config import EvaluateConfig, ModelConfig, RecommendConfig, TrainConfig
from linkedout.service.config import (
    CatalogAddConfig,
    CatalogPublishConfig,
    CatalogRemoveConfig,
    ServeConfig,
)
from linkedout.settings import docs, types
from linkedout.storage.config import (
    ExportConfig,
    InfoConfig,
    MergeConfig,
    OptimizeConfig,
    TagConfig,
    VerifyConfig,
)

runner = CliRunner()


def leaf_fields(cls: type) -> dict[str, tuple[type, dataclasses.Field]]:
    found = {}
    for f in dataclasses.fields(cls):
        group = types(cls)[f.name]
        if dataclasses.is_dataclass(group):
            found |= leaf_fields(group)
        else:
            found[f.name] = (cls, f)
    return found


COMMANDS = [
    ("extract", ExtractConfig),
    ("train", TrainConfig),
    ("evaluate", EvaluateConfig),
    ("recommend", RecommendConfig),
    ("info", InfoConfig),
    ("export", ExportConfig),
    ("optimize", OptimizeConfig),
    ("serve", ServeConfig),
    ("tag", TagConfig),
    ("verify", VerifyConfig),
    ("merge", MergeConfig),
]
SUBCOMMANDS = [
    ("catalog", "add", CatalogAddConfig),
    ("catalog", "remove", CatalogRemoveConfig),
    ("catalog", "publish", CatalogPublishConfig),
]


@pytest.mark.parametrize("command, config", COMMANDS)
def test_every_setting_is_an_option_with_its_docstring_and_its_one_default(command, config):
    params = {p.name: p for p in typer.main.get_command(app).commands[command].params}
    for name, (owner, field) in leaf_fields(config).items():
        assert name in params, f"{owner.__name__}.{name} has no option"
        param = params[name]
        assert docs(owner)[name] and docs(owner)[name][:30] in param.help.replace("\\[", "[")
        if field.default is not dataclasses.MISSING and field.metadata.get("cli_type") is None:
            assert param.default == field.default, name


def test_a_setting_only_the_config_knew_reaches_it_from_the_command_line():
    seen = []
    probe = typer.Typer()
    probe.command()(options_from(TrainConfig)(lambda config: seen.append(config)))
    args = "--features f --interactions i.csv -o r --eval-batch-size 7 --fusion mean --ids"
    result = runner.invoke(probe, [*args.split(), "-s", "region=eu", "--no-allow-missing"])
    assert result.exit_code == 0, result.output
    expected = TrainConfig(
        features="f",
        interactions="i.csv",
        out="r",
        eval_batch_size=7,
        model=ModelConfig(fusion="mean", ids=True),
        storage_options={"region": "eu"},
    )
    assert seen == [expected]


def test_nested_settings_and_parsed_values_land_in_their_group():
    seen = []
    probe = typer.Typer()
    probe.command()(options_from(ExtractConfig)(lambda config: seen.append(config)))
    args = "--videos v --out o --shard 1/4 --engine ray --ray-address auto --workers 3"
    assert runner.invoke(probe, args.split()).exit_code == 0
    [config] = seen
    assert config.shard == (1, 4) and config.ray == RayOptions(address="auto", workers=3)
    assert config.videos == Path("v") and config.commit_every == ExtractConfig.commit_every


def test_python_errors_name_the_setting_and_the_cli_shows_its_flag(tmp_path):
    with pytest.raises(SettingError, match=r"^frames=0: sample at least 1 frame"):
        ExtractConfig(out="o", videos=tmp_path, frames=0)
    with pytest.raises(SettingError, match=r"^heads=3: must divide `d_model` \(64\)"):
        ModelConfig(heads=3)
    cases = {
        "extract --videos v --out o --workers 0": "--workers 0: run at least 1 model replica",
        "extract --videos v --out o --store-dtype fp8": "--store-dtype 'fp8': use float16",
        "train --features f --interactions i --out o --heads 3": "--heads 3: must divide --d-model",
        "train --features f --interactions i --out o --lr -1": "--lr -1.0: the learning rate",
        "train --features f --interactions i --out o --fusion none": "uses no content: add --ids",
        "train --features f --interactions i --out o --new-item-lift nan": "a finite number",
        "evaluate r --new-item-lift inf": "--new-item-lift inf: give a finite number",
        "serve r --new-item-lift nan": "--new-item-lift nan: give a finite number",
        "recommend r --user u --new-item-lift nan": "give a finite number",
        # NaN passes every `<` bound; each bounded float setting refuses it and inf.
        "evaluate r --catalog-memory-gb nan": "--catalog-memory-gb nan: give a finite number",
        "train --features f --interactions i --out o --feature-memory-gb inf": "a finite number",
    }
    for command, message in cases.items():
        result = runner.invoke(app, command.split())
        assert result.exit_code == 2, (command, result.output)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], (command, lines)


def test_a_literal_setting_refuses_what_it_does_not_list():
    with pytest.raises(SettingError, match="use target, batch"):
        TrainConfig(features="f", interactions="i", out="o", loss_weighting="sum")
    assert [o.cli_type for o in options(ModelConfig) if o.name == "token_pool"] == [str]


def test_a_command_declares_by_hand_only_how_it_prints():
    # Everything a command computes with comes from its config; what is left is output form.
    commands = typer.main.get_command(app).commands
    for command, config in COMMANDS:
        own = {p.name for p in commands[command].params} - set(leaf_fields(config))
        assert own <= {"as_json", "quiet", "prompt_file", "help"}, (command, own)
    for group, command, config in SUBCOMMANDS:
        own = {p.name for p in commands[group].commands[command].params}
        assert own - set(leaf_fields(config)) <= {"help"}, (group, command, own)
    every = {name for name, _ in COMMANDS} | {group for group, _, _ in SUBCOMMANDS}
    assert set(commands) == every  # every command has its config
