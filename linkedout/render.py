"""What the commands print: rich tables and progress bars over the library's result objects."""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import TYPE_CHECKING

from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:  # annotations only: `linkedout --help` must not import Lightning
    from linkedout.recommend.run import EvalReport
    from linkedout.storage.status import Failure, StoreInfo
    from linkedout.storage.verify import VerifyReport

console = Console()
err_console = Console(stderr=True)


@contextmanager
def progress_bar(quiet: bool, unit: str):
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


@contextmanager
def count_bar(label: str, unit: str):
    """A rich bar for work counted in `unit`s; yields `update(done, total)`."""
    columns = (
        TextColumn(f"[bold]{label}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    )
    # Off a terminal a transient bar cannot be erased: it would leave a blank line before
    # the command's message (and in logs), so there it is not drawn at all.
    disable = not err_console.is_terminal
    with Progress(*columns, console=err_console, transient=True, disable=disable) as progress:
        task = progress.add_task(label, total=None)

        def update(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        yield update


def metrics(report: EvalReport, title: str) -> None:
    """Valid/test metrics beside popularity, as `train` and `evaluate` print them."""
    names = ("HR@10", "NDCG@10", "HR@20", "NDCG@20", "MRR")
    labels = {
        "valid": "valid",
        "test": "test",
        "test_cold_start": "cold items",
        "test_long_tail": "long tail (1-5)",
        "test_unmasked": "test, unmasked",
    }
    shown = [(split, label) for split, label in labels.items() if split in report.splits]
    users = ", ".join(
        f"{label} {report.splits[split].model['users']:,}"
        for split, label in shown
        if split != "test_unmasked"
    )
    table = Table(
        title=Text(f"{title}\nusers: {users}"),  # Text: a run path is not markup
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    table.add_column("split", no_wrap=True)
    table.add_column("ranker", no_wrap=True)
    for name in names:
        table.add_column(name, no_wrap=True, justify="right")
    for split, label in shown:
        for who, name in (("model", "LinkedOut"), ("popularity", "popularity")):
            m = getattr(report.splits[split], who)
            table.add_row(label, name, *(f"{m[n]:.4f}" for n in names))
    console.print(table, highlight=False)
    if "test_unmasked" in report.splits:
        console.print("unmasked: earlier items stay candidates (RecBole's rule)", highlight=False)
    gate = report.gate
    if gate is not None and len(gate.layers) > 1:
        gates = "  ".join(
            f"{layer}: {w:.2f}" for layer, w in zip(gate.layers, gate.mean, strict=True)
        )
        console.print(f"mean gate over depths (test users): {gates}", highlight=False)


def recommendations(result, watched: int, explain: bool) -> None:
    """The ranked items (and, with explain, the gate) of `linkedout recommend`."""
    if result.unknown:
        err_console.print(
            f"note: {len(result.unknown)} history item(s) unknown to this run, "
            f"ignored (e.g. {result.unknown[0]!r})",
            markup=False,  # ids are the user's text, never markup
            highlight=False,
            soft_wrap=True,
        )
    if explain and not result.gate:
        err_console.print(
            "note: this run ranks by item IDs alone (--fusion none): no depths to explain",
            highlight=False,
            soft_wrap=True,
        )
        explain = False
    table = Table(
        "#",
        "item",
        "score",
        *(["strongest layer"] if explain else []),
        title=f"top {len(result.items)} after {watched} watched item(s)",
        title_justify="left",
    )
    for rank, r in enumerate(result.items, 1):
        table.add_row(
            str(rank), Text(r.item_id), f"{r.score:.3f}", *([str(r.top_expert)] if explain else [])
        )
    console.print(table, highlight=False)
    if explain:
        gates = "  ".join(f"{_expert(layer)}: {w:.2f}" for layer, w in result.gate.items())
        console.print(f"this user's gate over depths: {gates}", highlight=False)


def dataset_info(stored: StoreInfo, failures: list[Failure]) -> None:
    """`linkedout info`: how a feature dataset was made."""
    m = stored.manifest
    table = Table(title=Text(stored.uri, style="bold"), show_header=False, title_justify="left")
    table.add_column(style="cyan", no_wrap=True)
    table.add_column(overflow="fold")
    rows = [
        ("items", f"{stored.rows:,} with features, {stored.failures:,} failed"),
        ("tensor", f"[layers, tokens, dim] = {list(m.shape)} {m.dtype}"),
        (
            "backbone",
            f"{m.backbone} ({m.backbone_kind}, revision {m.backbone_revision or 'unknown'})",
        ),
        ("layers", ", ".join(map(str, m.layers))),
        ("pooling", m.pooling or "-"),
        *(
            [
                (
                    f"query {name}",
                    text
                    + (
                        f"  ({stored.query_items[name]:,} of {stored.rows:,} items)"
                        if name in stored.query_items
                        else ""
                    ),
                )
                for name, text in m.queries
            ]
            + [("query position", f"{m.query_position} the video")]
            if m.queries
            else [("prompt", m.prompt or "-")]
        ),
        ("frames per video", str(m.frames_per_video or "-")),
        *((f"recipe: {k}", v) for k, v in sorted(m.recipe.items())),
        *((f"written by: {k}", v) for k, v in sorted(m.provenance.items())),
        ("format", f"version {m.format_version}, linkedout {m.linkedout_version}"),
        ("size on disk", human_bytes(stored.size_bytes) + f" in {stored.fragments} fragment(s)"),
        (
            "version",
            f"{stored.version} ({stored.versions} kept), "
            f"last written {stored.updated:%Y-%m-%d %H:%M:%S} UTC"
            if stored.updated
            else str(stored.version),
        ),
        (
            "tags",
            ", ".join(f"{name} -> version {v}" for name, v in stored.tags.items()) or "none",
        ),
        ("indices", ", ".join(stored.indices) or "none"),
    ]
    for key, value in rows:
        table.add_row(key, Text(value))  # Text: values like "[layers, ...]" are not markup
    console.print(table, highlight=False)
    if stored.duplicates:
        console.print(
            Text(
                f"warning: {stored.duplicates:,} duplicate row(s) (items stored more than once "
                "by an older linkedout; reads use one per item): run "
                f"`linkedout optimize {stored.uri}` to remove them",
                style="yellow",
            ),
            highlight=False,
        )
    if failures:
        failed = Table(
            "failed item",
            "source",
            "reason",
            title_justify="left",
            title=f"{len(failures)} of {stored.failures} failures (extract retries them)",
        )
        for f in failures:
            failed.add_row(Text(f.item_id), Text(f.source), Text(f.error))
        console.print(failed, highlight=False)


def verify_report(report: VerifyReport) -> None:
    """`linkedout verify`: what was checked, then each kind of problem, then the verdict."""
    rate = report.bytes_hashed / report.seconds if report.seconds > 0 else 0.0
    lines = [
        f"{report.uri}@{report.version}: {report.rows:,} rows read, {report.verified:,} items "
        f"match their digests; {human_bytes(report.bytes_hashed)} hashed in "
        f"{report.seconds:.1f} s ({human_bytes(int(rate))}/s)"
    ]
    if report.unverifiable:
        lines.append(
            f"{report.unverifiable:,} items were written before digests (linkedout before "
            "2026-12-07): read and shape-checked, not verifiable byte for byte"
        )
    for line in lines:
        console.print(Text(line), highlight=False, soft_wrap=True)
    for problem in report.problems():
        console.print(Text("problem: " + problem, style="red"), highlight=False, soft_wrap=True)
    verdict = "verified" if report.ok else "NOT verified: see the problems above"
    console.print(Text(verdict, style="green" if report.ok else "bold red"), highlight=False)


def human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _expert(name: int | str) -> str:
    """A depth as `layer 4`; a (query, depth) expert as its own name, `mood:4`."""
    return f"layer {name}" if isinstance(name, int) else name
