"""`linkedout` command line: each command is a thin wrapper over one typed function."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Annotated

import click
import typer
import typer.core
from rich.markup import escape

from linkedout import __version__, render
from linkedout.cli_options import flag_of, options_from
from linkedout.errors import LinkedOutError, SettingError
from linkedout.extract.config import ExtractConfig
from linkedout.recommend.config import EvaluateConfig, RecommendConfig, TrainConfig
from linkedout.service.config import (
    CatalogAddConfig,
    CatalogIndexConfig,
    CatalogPublishConfig,
    CatalogRemoveConfig,
    ServeConfig,
)
from linkedout.storage.config import (
    ExportConfig,
    InfoConfig,
    MergeConfig,
    OptimizeConfig,
    TagConfig,
    VerifyConfig,
)


class _Group(typer.core.TyperGroup):
    """Turns a `LinkedOutError` into one line on stderr and exit code 2."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except LinkedOutError as e:
            message = e.with_flags(flag_of) if isinstance(e, SettingError) else str(e)
            # Escaped: messages quote flags and extras like `linkedout[distributed]`.
            render.err_console.print(
                f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True
            )
            raise SystemExit(2) from None


app = typer.Typer(
    cls=_Group,
    help="LinkedOut: video recommendation from multi-layer Video-LLM knowledge.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)


def _version(value: bool) -> None:
    if value:
        render.console.print(f"linkedout {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """LinkedOut: video recommendation from multi-layer Video-LLM knowledge."""


@app.command(no_args_is_help=True)
@options_from(ExtractConfig)
def extract(
    config: ExtractConfig,
    prompt_file: Annotated[
        Path | None, typer.Option(help="Read the prompt from this file instead.")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Read every video (or text) once with a Video LLM and store multi-layer hidden states."""
    from linkedout.extract.pipeline import extract as run_extract

    if prompt_file:
        config = dataclasses.replace(config, prompt=_read_prompt(prompt_file))
    _quiet_libraries(quiet)
    with render.progress_bar(quiet, "videos" if config.texts is None else "texts") as on_progress:
        summary = run_extract(config, on_progress=on_progress)
    all_failed = summary.all_failed()
    if all_failed:  # stored as failures; a run that extracted nothing must not exit 0
        raise LinkedOutError(all_failed)
    for note in summary.notes:
        render.err_console.print(f"note: {note}", markup=False, highlight=False, soft_wrap=True)
    render.console.print(summary.line(), markup=False, highlight=False, soft_wrap=True)


def _quiet_libraries(quiet: bool) -> None:
    """Damaged files make decord's FFmpeg print per-packet noise; the failure is stored anyway."""
    import decord
    import transformers

    decord.logging.set_level(decord.logging.QUIET)
    if quiet:
        transformers.utils.logging.disable_progress_bar()


def _read_prompt(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError as e:
        raise LinkedOutError(f"--prompt-file {path}: {e.strerror}") from None


@app.command(no_args_is_help=True)
@options_from(TrainConfig)
def train(config: TrainConfig) -> None:
    """Train the LinkedOut recommender from a feature dataset and interactions."""
    from linkedout.recommend.resume import plan_out_dir
    from linkedout.recommend.run import RunDir

    if all(os.environ.get(v, "0") == "0" for v in ("RANK", "LOCAL_RANK", "NODE_RANK")):
        # A bad --out is answered before Lightning loads; the data-parallel ranks Lightning
        # starts leave --out to the first, which holds its lock.
        plan_out_dir(config, RunDir(config.out))
    from linkedout.recommend.train import train as run_train

    _quiet_lightning()
    run = run_train(config)
    if run is not None:  # the other data-parallel ranks leave the report to the first
        render.metrics(RunDir(run).metrics(), title=str(run))


@app.command(no_args_is_help=True)
@options_from(EvaluateConfig)
def evaluate(
    config: EvaluateConfig,
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
) -> None:
    """Full-ranking HR/NDCG/MRR of a trained run, beside popularity and the cold-start slice."""
    budget = config.memory_budget()
    _verify_run(config.run)

    from linkedout.recommend.evaluate import evaluate_run

    report = evaluate_run(
        config.run,
        splits=(config.split,),
        memory_budget=budget,
        new_item_lift=config.new_item_lift,
    )
    if as_json:
        typer.echo(json.dumps(report.to_json(), indent=2))
    else:
        render.metrics(report, title=f"{config.run} ({config.split})")


@app.command(no_args_is_help=True)
@options_from(RecommendConfig)
def recommend(
    config: RecommendConfig,
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
) -> None:
    """Top-k items for a user or a watch history, from the run's newest catalog (items added
    with `linkedout catalog add` included), as `linkedout serve` ranks them."""
    _verify_run(config.run)

    from linkedout.service.ranker import Ranker, RankRequest
    from linkedout.service.results import recommendations_json

    ranker = Ranker(config.run, config.new_item_lift, config.index)
    if config.index == "graph" and ranker.graph is None:
        raise LinkedOutError(
            f"{config.run} has no graph index: build one with `linkedout catalog index "
            f"{config.run}`, or rank with --index exact"
        )
    items = ranker.history_of(config.user) if config.history is None else list(config.history)
    (result,) = ranker.rank([RankRequest(history=items, k=config.k, explain=config.explain)])
    if as_json:
        typer.echo(json.dumps(recommendations_json(result), indent=2))
        return
    render.recommendations(result, len(items), config.explain)


def _verify_run(run: Path) -> None:
    """A damaged or unfinished run is one line at once, before the model's libraries load."""
    from linkedout.recommend.run import RunDir

    RunDir(run).verify()


def _quiet_lightning() -> None:
    import logging
    import warnings

    for name in (
        "lightning.pytorch.utilities.rank_zero",
        "lightning.fabric.utilities.rank_zero",
        "lightning.pytorch.accelerators.cuda",
    ):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", module="lightning")


@app.command(no_args_is_help=True)
@options_from(InfoConfig)
def info(
    config: InfoConfig,
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
) -> None:
    """Show how a feature dataset was made: manifest, rows, failures, size, versions."""
    from linkedout.storage.store import FeatureStore

    store = FeatureStore.open(config.uri, config.storage_options)
    stored = store.info()
    failures = store.failures()[: config.failures] if stored.failures else []
    if as_json:
        typer.echo(json.dumps(stored.to_json(failures), indent=2))
        return
    render.dataset_info(stored, failures)


@app.command(no_args_is_help=True)
@options_from(TagConfig)
def tag(config: TagConfig) -> None:
    """Name a version of a feature dataset (Lance's own tags), so runs can pin it
    (`train --features URI@NAME`) and `optimize` keeps it; or delete a tag (--delete)."""
    from linkedout.storage.pins import create_tag, delete_tag
    from linkedout.storage.store import FeatureStore

    store = FeatureStore.open(config.uri, config.storage_options)
    if config.delete:
        version = delete_tag(store.dataset, store.uri, config.name)
        said = f"tag {config.name} deleted (it named version {version})"
    else:
        version = create_tag(store.dataset, store.uri, config.name, config.version)
        pinned = f"{store.uri}@{config.name}"
        said = f"version {version} tagged {config.name}: train on it with --features {pinned}"
    render.console.print(f"{store.uri}: {said}", markup=False, highlight=False, soft_wrap=True)


@app.command(no_args_is_help=True)
@options_from(ExportConfig)
def export(config: ExportConfig) -> None:
    """Copy a feature dataset to any URI and write its dataset card (README.md inside it):
    the whole of it, or a subset (--layers, --queries, --items or --where) that reads and
    writes only what it keeps."""
    from linkedout.storage.share import export as export_dataset
    from linkedout.storage.subset import Subset, read_item_ids

    subset = Subset(
        layers=tuple(config.layers),
        queries=tuple(config.queries),
        items=read_item_ids(config.items) if config.items is not None else None,
        items_from=config.items,
        where=config.where,
    )
    with render.count_bar("export", "items") as update:
        copy = export_dataset(
            config.src,
            config.dest,
            src_options=config.src_storage_options,
            dest_options=config.storage_options,
            subset=subset,
            on_progress=update,
            license=config.license,
        )
    what = copy.manifest.provenance.get("subset") if subset.selects else None
    render.console.print(
        f"exported {len(copy):,} items to {copy.uri} (card: {copy.uri}/README.md)"
        + (f"; a subset: {what}" if what else ""),
        markup=False,
        highlight=False,
        soft_wrap=True,
    )


@app.command(no_args_is_help=True)
@options_from(MergeConfig)
def merge(config: MergeConfig) -> None:
    """Merge feature datasets extracted apart (other machines, days, clusters) with the same
    manifest into one, each item in one row, and verify the result."""
    from linkedout.storage.merge import merge as merge_datasets

    with render.count_bar("merge", "rows") as update:
        result = merge_datasets(
            config.sources, config.out, config.prefer, config.storage_options, update
        )
    render.console.print(
        f"{result.store.uri}: {len(result.store):,} items ({result.added:,} rows written, "
        f"{result.resolved:,} items found in several inputs resolved); version "
        f"{result.store.version}, verified",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )


@app.command(no_args_is_help=True)
@options_from(VerifyConfig)
def verify(
    config: VerifyConfig,
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
) -> None:
    """Check every row of a feature dataset against the digests written with it, and its
    schema against its manifest: names corrupt, missing and duplicated rows, and exits 1 when
    there are any (0 when the dataset verifies)."""
    from linkedout.storage.store import FeatureStore
    from linkedout.storage.verify import verify as verify_store

    store = FeatureStore.open(config.uri, config.storage_options)
    with render.count_bar("verify", "rows") as update:
        report = verify_store(store, update)
    if as_json:
        typer.echo(json.dumps(report.to_json(), indent=2))
    else:
        render.verify_report(report)
    raise typer.Exit(0 if report.ok else 1)


@app.command(no_args_is_help=True)
@options_from(OptimizeConfig)
def optimize(config: OptimizeConfig) -> None:
    """Merge the small fragments of batched writes, free the space older versions hold, and
    delete duplicate rows older versions left (one row per item is kept).

    Run it when nothing else writes to or reads an older version of the dataset (for instance
    after all shards of a sharded extraction have finished).
    """
    from linkedout.storage.maintenance import optimize as optimize_dataset
    from linkedout.storage.pins import split_pin
    from linkedout.storage.store import FeatureStore

    uri, pin = split_pin(config.uri)
    if pin is not None:
        raise LinkedOutError(
            f"optimize rewrites the newest version, not @{pin}: give {uri} without it (tagged "
            "versions are kept)"
        )
    store = FeatureStore.open(config.uri, config.storage_options)
    report = optimize_dataset(store, prune_old_versions=not config.keep_old_versions)
    repaired = (
        f", {report.duplicates_removed:,} duplicate row(s) removed"
        if report.duplicates_removed
        else ""
    )
    render.console.print(
        f"{store.uri}: {report.fragments_before} -> {report.fragments_after} fragment(s), "
        f"{render.human_bytes(report.bytes_before)} -> "
        f"{render.human_bytes(report.bytes_after)} on disk{repaired}",
        markup=False,
        highlight=False,
    )


@app.command(no_args_is_help=True)
@options_from(ServeConfig)
def serve(config: ServeConfig) -> None:
    """Serve a trained run over HTTP: POST /recommend, /recommend/batch; GET /healthz, /readyz,
    /metadata, /items/ID; OpenAPI docs at /docs. New catalog versions (catalog add/remove)
    are picked up while serving."""
    _verify_run(config.run)
    from linkedout.service.server import serve as run_server

    run_server(config)


catalog_app = typer.Typer(
    cls=_Group,
    help="Add items to a trained run's catalog, or remove them, without retraining.",
    no_args_is_help=True,
)
app.add_typer(catalog_app, name="catalog")


@catalog_app.command("add", no_args_is_help=True)
@options_from(CatalogAddConfig)
def catalog_add(config: CatalogAddConfig) -> None:
    """Embed the items of a feature dataset that the run's catalog lacks (new uploads) with the
    trained model, as a new catalog version; a running `linkedout serve` ranks them within
    its --poll-seconds."""
    _verify_run(config.run)
    from linkedout.service.catalog_changes import add_items

    with render.count_bar("embed", "items") as update:
        change = add_items(config.run, config.features, config.storage_options, update)
    render.console.print(
        f"{config.run}: {change.added:,} item(s) added, {change.already:,} already in the "
        f"catalog; version {change.version}, {change.size:,} items",
        markup=False,
        highlight=False,
    )


@catalog_app.command("remove", no_args_is_help=True)
@options_from(CatalogRemoveConfig)
def catalog_remove(config: CatalogRemoveConfig) -> None:
    """Stop recommending these items (a new catalog version; evaluation is unchanged)."""
    _verify_run(config.run)
    from linkedout.service.catalog_changes import remove_items

    change = remove_items(config.run, list(config.items))
    render.console.print(
        f"{config.run}: {change.removed:,} item(s) removed, {change.already:,} not in the "
        f"catalog; version {change.version}, {change.size:,} items",
        markup=False,
        highlight=False,
    )


@catalog_app.command("index", no_args_is_help=True)
@options_from(CatalogIndexConfig)
def catalog_index(config: CatalogIndexConfig) -> None:
    """Build the run's graph index over its newest catalog version: `serve` and `recommend`
    then find each user's top k among a few hundred candidates instead of scanning every
    item (README, serving: recall@10 and speed at a million items). Items added or removed
    later are handled beside it; `serve` rebuilds it in the background when they grow."""
    _verify_run(config.run)

    from linkedout.service.indexing import build_for
    from linkedout.service.ranker import Ranker

    ranker = Ranker(config.run, config.new_item_lift)
    snap = ranker.snapshot
    with render.count_bar("link", "items") as update:
        done = [0]

        def progress(n: int) -> None:
            done[0] += n
            update(done[0], snap.size)  # the graph holds every live item

        stored = build_for(
            ranker, snap, config.settings(), config.threads or os.cpu_count() or 1, progress
        )
    render.console.print(
        f"{config.run}: graph index over catalog version {snap.version}, "
        f"{len(stored.items):,} items, built in {stored.built_seconds:.1f} s",
        markup=False,
        highlight=False,
    )


@catalog_app.command("publish", no_args_is_help=True)
@options_from(CatalogPublishConfig)
def catalog_publish(config: CatalogPublishConfig) -> None:
    """Copy the run's catalog (every version) to an object store and read it there from now
    on: several `linkedout serve` processes, on any hosts, then serve one catalog, and each
    `catalog add` or `remove` reaches all of them within their --poll-seconds. Credentials are
    never written to the run: give them to each host (AWS_ACCESS_KEY_ID, ...)."""
    _verify_run(config.run)
    from linkedout.recommend.catalog_location import public_options
    from linkedout.service.catalog_changes import publish_catalog

    published = publish_catalog(config.run, config.uri, config.storage_options)
    render.console.print(
        f"{config.run}: catalog published to {published.path} (version {published.version}, "
        f"{published.num_rows - 1:,} rows); the run reads it there from now on",
        markup=False,
        highlight=False,
    )
    left_out = sorted(set(config.storage_options) - set(public_options(config.storage_options)))
    if left_out:
        render.console.print(
            f"note: {', '.join(left_out)} not stored with the run: give each host its "
            "credentials (e.g. AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)",
            markup=False,
            highlight=False,
        )


if __name__ == "__main__":
    app()
