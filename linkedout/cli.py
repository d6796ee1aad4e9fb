"""`linkedout` command line: each command is a thin wrapper over one typed function."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Annotated

import click
import typer
import typer.core
from rich.console import Console
from rich.table import Table
from rich.text import Text

from linkedout import __version__
from linkedout.errors import LinkedOutError

console = Console()
err_console = Console(stderr=True)


class _Group(typer.core.TyperGroup):
    """Turns a `LinkedOutError` into one line on stderr and exit code 2."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except LinkedOutError as e:
            err_console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
            raise SystemExit(2) from None


app = typer.Typer(
    cls=_Group,
    help="LinkedOut: video recommendation from multi-layer Video-LLM knowledge.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)

StorageOptions = Annotated[
    list[str] | None,
    typer.Option(
        "--storage-option",
        "-s",
        help="Object-store option KEY=VALUE passed to Lance (e.g. aws_endpoint=http://host:9000, "
        "allow_http=true); repeatable. The usual AWS_* environment variables work too.",
    ),
]


def _version(value: bool) -> None:
    if value:
        console.print(f"linkedout {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """LinkedOut: video recommendation from multi-layer Video-LLM knowledge."""


@app.command()
def info(
    uri: Annotated[str, typer.Argument(help="Feature dataset: a local path or s3://bucket/path.")],
    storage_option: StorageOptions = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
    show_failures: Annotated[
        int, typer.Option("--failures", help="How many failed items to list.")
    ] = 10,
) -> None:
    """Show how a feature dataset was made: manifest, rows, failures, size, versions."""
    from linkedout.storage.store import FeatureStore
    from linkedout.storage.uri import parse_storage_options

    store = FeatureStore.open(uri, parse_storage_options(storage_option))
    facts = store.info()
    failures = store.failures()[: max(show_failures, 0)] if facts.failures else []
    if as_json:
        out = {
            "uri": facts.uri,
            "manifest": asdict(facts.manifest),
            "rows": facts.rows,
            "failures": facts.failures,
            "failed_items": [asdict(f) for f in failures],
            "size_bytes": facts.size_bytes,
            "version": facts.version,
            "versions": facts.versions,
            "fragments": facts.fragments,
            "indices": facts.indices,
            "created": facts.created.isoformat() if facts.created else None,
            "updated": facts.updated.isoformat() if facts.updated else None,
        }
        typer.echo(json.dumps(out, indent=2))
        return
    m = facts.manifest
    table = Table(title=f"[bold]{facts.uri}[/]", show_header=False, title_justify="left")
    table.add_column(style="cyan", no_wrap=True)
    table.add_column(overflow="fold")
    rows = [
        ("items", f"{facts.rows:,} with features, {facts.failures:,} failed"),
        ("tensor", f"[layers, tokens, dim] = {list(m.shape)} {m.dtype}"),
        (
            "backbone",
            f"{m.backbone} ({m.backbone_kind}, revision {m.backbone_revision or 'unknown'})",
        ),
        ("layers", ", ".join(map(str, m.layers))),
        ("pooling", m.pooling or "-"),
        ("prompt", m.prompt or "-"),
        ("frames per video", str(m.frames_per_video or "-")),
        *((f"recipe: {k}", v) for k, v in sorted(m.recipe.items())),
        *((f"written by: {k}", v) for k, v in sorted(m.provenance.items())),
        ("format", f"version {m.format_version}, linkedout {m.linkedout_version}"),
        ("size on disk", _human_bytes(facts.size_bytes) + f" in {facts.fragments} fragment(s)"),
        (
            "version",
            f"{facts.version} of {facts.versions}, "
            f"last written {facts.updated:%Y-%m-%d %H:%M:%S} UTC"
            if facts.updated
            else str(facts.version),
        ),
        ("indices", ", ".join(facts.indices) or "none"),
    ]
    for key, value in rows:
        table.add_row(key, Text(value))  # Text: values like "[layers, ...]" are not markup
    console.print(table, highlight=False)
    if failures:
        failed = Table(
            "failed item",
            "source",
            "reason",
            title_justify="left",
            title=f"{len(failures)} of {facts.failures} failures (extract retries them)",
        )
        for f in failures:
            failed.add_row(Text(f.item_id), Text(f.source), Text(f.error))
        console.print(failed, highlight=False)


@app.command()
def export(
    src: Annotated[str, typer.Argument(help="Feature dataset to copy (path or URI).")],
    dest: Annotated[
        str, typer.Argument(help="Where to put the copy: a new path or s3://bucket/path.")
    ],
    storage_option: StorageOptions = None,
    src_storage_option: Annotated[
        list[str] | None,
        typer.Option("--src-storage-option", help="KEY=VALUE for the source only; repeatable."),
    ] = None,
) -> None:
    """Copy a feature dataset to any URI and write its dataset card (README.md inside it)."""
    from linkedout.storage.share import export as export_dataset
    from linkedout.storage.uri import parse_storage_options

    copy = export_dataset(
        src,
        dest,
        src_options=parse_storage_options(src_storage_option),
        dest_options=parse_storage_options(storage_option),
    )
    console.print(
        f"exported {len(copy):,} items to {copy.uri} (card: {copy.uri}/README.md)",
        highlight=False,
        soft_wrap=True,
    )


@app.command()
def optimize(
    uri: Annotated[str, typer.Argument(help="Feature dataset (path or URI).")],
    storage_option: StorageOptions = None,
    keep_old_versions: Annotated[
        bool,
        typer.Option(
            help="Keep the files of older versions (time travel) instead of freeing them."
        ),
    ] = False,
) -> None:
    """Merge the small fragments of batched writes and free the space older versions hold.

    Run it when nothing else writes to or reads an older version of the dataset (for instance
    after all shards of a sharded extraction have finished).
    """
    from linkedout.storage.store import FeatureStore
    from linkedout.storage.uri import parse_storage_options

    store = FeatureStore.open(uri, parse_storage_options(storage_option))
    report = store.optimize(prune_old_versions=not keep_old_versions)
    console.print(
        f"{store.uri}: {report.fragments_before} -> {report.fragments_after} fragment(s), "
        f"{_human_bytes(report.bytes_before)} -> {_human_bytes(report.bytes_after)} on disk",
        highlight=False,
    )


def _human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


if __name__ == "__main__":
    app()
