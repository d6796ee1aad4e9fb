"""`linkedout` command line: each command is a thin wrapper over one typed function."""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import click
import typer
import typer.core
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from linkedout import __version__
from linkedout.errors import LinkedOutError
from linkedout.extract.defaults import DEFAULT_PROMPT, DEFAULT_VIDEO_MODEL

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


@app.command(no_args_is_help=True)
def extract(
    out: Annotated[
        str,
        typer.Option(
            "--out",
            "-o",
            help="Feature dataset to write: path or s3://bucket/path. Re-running resumes it.",
        ),
    ],
    videos: Annotated[
        Path | None,
        typer.Option(
            help="Folder of videos, searched recursively (mp4, mkv, webm, avi, mov, m4v)."
        ),
    ] = None,
    texts: Annotated[
        Path | None,
        typer.Option(
            help="Table of item texts (CSV/TSV/JSONL/Parquet) for a text backbone, "
            "instead of --videos."
        ),
    ] = None,
    model: Annotated[
        str, typer.Option(help="Hub id or local checkpoint folder, loaded with from_pretrained.")
    ] = DEFAULT_VIDEO_MODEL,
    prompt: Annotated[
        str,
        typer.Option(
            help="Query given with every video; {title} is filled from --titles "
            "(lines with {title} are dropped for untitled videos)."
        ),
    ] = DEFAULT_PROMPT,
    prompt_file: Annotated[
        Path | None, typer.Option(help="Read the prompt from this file instead.")
    ] = None,
    titles: Annotated[
        Path | None, typer.Option(help="Table of item ids (= video file stems) and titles.")
    ] = None,
    id_column: Annotated[
        str | None, typer.Option(help="Id column of --titles/--texts (default: detected).")
    ] = None,
    text_column: Annotated[
        str | None,
        typer.Option(help="Text column of --titles/--texts (default: detected, e.g. title)."),
    ] = None,
    frames: Annotated[
        int, typer.Option(help="Frames sampled uniformly over each whole video.")
    ] = 16,
    max_pixels: Annotated[
        int | None, typer.Option(help="Pixel budget per frame (default: the checkpoint's).")
    ] = None,
    layers: Annotated[
        str,
        typer.Option(
            help="Depths to keep: auto:N (N evenly spaced, ending with the last), all, "
            "or 4,8,12 (0 = embeddings)."
        ),
    ] = "auto:8",
    tokens_per_layer: Annotated[
        int, typer.Option(help="T: pooled token slots kept per layer.")
    ] = 16,
    new_tokens: Annotated[
        int, typer.Option(help="Also keep the states of N greedily generated tokens.")
    ] = 0,
    batch_size: Annotated[int, typer.Option(help="Items per model forward.")] = 1,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    dtype: Annotated[
        str, typer.Option(help="Compute dtype: auto (bf16 on GPU, fp32 on CPU), bf16, fp16, fp32.")
    ] = "auto",
    store_dtype: Annotated[
        str, typer.Option(help="Stored tensor dtype: float16, bfloat16 or float32.")
    ] = "float16",
    shard: Annotated[
        str | None,
        typer.Option(
            help="I/N: take a deterministic 1/N of the items, so N processes can fill one dataset."
        ),
    ] = None,
    limit: Annotated[
        int | None, typer.Option(help="Extract at most N items (after --shard).")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Re-extract items already stored.")] = False,
    commit_every: Annotated[
        int,
        typer.Option(
            help="Rows per commit: a kill loses at most this much work; larger makes fewer "
            "fragments."
        ),
    ] = 16,
    workers: Annotated[
        int, typer.Option(help="Background threads decoding and packing videos.")
    ] = 2,
    storage_option: StorageOptions = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Read every video (or text) once with a Video LLM and store multi-layer hidden states."""
    from linkedout.extract.pipeline import ExtractConfig
    from linkedout.extract.pipeline import extract as run_extract
    from linkedout.storage.uri import parse_storage_options

    config = ExtractConfig(
        out=out,
        videos=videos,
        texts=texts,
        model=model,
        prompt=_read_prompt(prompt_file) if prompt_file else prompt,
        titles=titles,
        id_column=id_column,
        text_column=text_column,
        frames=frames,
        max_pixels=max_pixels,
        layers=layers,
        tokens_per_layer=tokens_per_layer,
        new_tokens=new_tokens,
        batch_size=batch_size,
        device=device,
        dtype=dtype,
        store_dtype=store_dtype,
        shard=_parse_shard(shard) if shard else None,
        limit=limit,
        overwrite=overwrite,
        decode_workers=workers,
        write_batch=commit_every,
        storage_options=parse_storage_options(storage_option),
    )
    _quiet_libraries(quiet)
    with _progress_bar(quiet, "videos" if texts is None else "texts") as on_progress:
        summary = run_extract(config, on_progress=on_progress)
    for note in summary.notes:
        err_console.print(f"note: {note}", highlight=False, soft_wrap=True)
    console.print(summary.line(), highlight=False, soft_wrap=True)


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


def _parse_shard(spec: str) -> tuple[int, int]:
    index, sep, count = spec.partition("/")
    if not sep or not index.strip().isdigit() or not count.strip().isdigit():
        raise LinkedOutError(f"--shard {spec!r}: write I/N, e.g. 0/4 for the first of 4 shards")
    return int(index), int(count)


@contextmanager
def _progress_bar(quiet: bool, unit: str):
    """A rich bar with rate, ETA and failures; yields the pipeline's progress callback."""
    if quiet:
        yield None
        return
    columns = (
        TextColumn("[bold]extract"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeRemainingColumn(),
        TextColumn("[red]{task.fields[failed]} failed"),
    )
    started = time.perf_counter()
    with Progress(*columns, console=err_console, transient=False) as progress:
        task = progress.add_task("extract", total=None, rate="", failed=0)

        def update(done: int, total: int, failed: int) -> None:
            elapsed = time.perf_counter() - started
            rate = f"{done / elapsed:.2f} {unit}/s" if done and elapsed > 0 else ""
            progress.update(task, completed=done, total=total, rate=rate, failed=failed)

        yield update


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
