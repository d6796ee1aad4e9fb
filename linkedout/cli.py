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
from rich import box
from rich.console import Console
from rich.markup import escape
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
            # Escaped: messages quote flags and extras like `linkedout[distributed]`.
            err_console.print(
                f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True
            )
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
    decode_threads: Annotated[
        int, typer.Option(help="Threads decoding and packing videos ahead of the model (local).")
    ] = 2,
    engine: Annotated[
        str,
        typer.Option(
            help="local: this process. ray: Ray Data over a cluster (decoding in CPU tasks, "
            "one model per worker); needs `pip install 'linkedout\\[distributed]'`."
        ),
    ] = "local",
    backend: Annotated[
        str,
        typer.Option(
            help="What runs the Video LLM: transformers (the reference) or vllm (a vLLM engine "
            "batching many videos at once; same rows). vllm needs `pip install "
            "'linkedout\\[vllm]'` on GPUs, or `make vllm-env` on CPUs."
        ),
    ] = "transformers",
    ray_address: Annotated[
        str | None,
        typer.Option(
            help="Ray cluster to join: auto (the running one) or HOST:PORT. Default: start one "
            "on this machine."
        ),
    ] = None,
    workers: Annotated[
        int, typer.Option(help="Model replicas for --engine ray, one weights load each.")
    ] = 1,
    gpus_per_worker: Annotated[
        float, typer.Option(help="GPUs per model replica (--engine ray; 0 runs on CPU).")
    ] = 0.0,
    cpus_per_worker: Annotated[
        float, typer.Option(help="CPUs per model replica (--engine ray).")
    ] = 1.0,
    storage_option: StorageOptions = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Read every video (or text) once with a Video LLM and store multi-layer hidden states."""
    from linkedout.extract.pipeline import ExtractConfig, RayOptions
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
        decode_threads=decode_threads,
        write_batch=commit_every,
        storage_options=parse_storage_options(storage_option),
        engine=engine,
        backend=backend,
        ray=RayOptions(ray_address, workers, gpus_per_worker, cpus_per_worker),
    )
    _quiet_libraries(quiet)
    with _progress_bar(quiet, "videos" if texts is None else "texts") as on_progress:
        summary = run_extract(config, on_progress=on_progress)
    for note in summary.notes:
        err_console.print(f"note: {note}", markup=False, highlight=False, soft_wrap=True)
    console.print(summary.line(), markup=False, highlight=False, soft_wrap=True)


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


@app.command(no_args_is_help=True)
def train(
    features: Annotated[str, typer.Option(help="Feature dataset written by `linkedout extract`.")],
    interactions: Annotated[
        Path,
        typer.Option(
            help="CSV/TSV/Parquet of user, item[, timestamp] rows, or MicroLens pairs "
            "(user<TAB>item item ...)."
        ),
    ],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Run directory to create, e.g. runs/NAME.")
    ],
    fusion: Annotated[
        str,
        typer.Option(
            help="How depths combine: moe (per-user gate), mean, last, layer:K, or none (IDs only)."
        ),
    ] = "moe",
    ids: Annotated[
        bool,
        typer.Option(
            "--ids/--no-ids",
            help="Add an item-ID embedding to the content (content only ranks unseen items).",
        ),
    ] = False,
    d_model: Annotated[
        int, typer.Option(help="Width of item vectors and of the sequence model.")
    ] = 64,
    expert_dim: Annotated[
        int, typer.Option(help="Dimensions of each depth's expert (its subspace of the model).")
    ] = 16,
    whiten: Annotated[
        int,
        typer.Option(
            help="Principal directions kept per depth by the whitening fitted on the catalog "
            "(0: LayerNorm the tokens at their full width instead)."
        ),
    ] = 64,
    id_dropout: Annotated[
        float,
        typer.Option(
            help="With content and --ids: drop a history item's ID vector with this probability "
            "in training, so the model learns to read items by their content too."
        ),
    ] = 0.2,
    token_pool: Annotated[
        str,
        typer.Option(help="How a depth's stored tokens become one vector: mean or attention."),
    ] = "mean",
    top_k: Annotated[
        int, typer.Option(help="Gate keeps the k largest layer weights (0 = soft gate).")
    ] = 0,
    balance_weight: Annotated[
        float, typer.Option(help="Weight of the gate load-balancing term.")
    ] = 0.01,
    blocks: Annotated[int, typer.Option(help="Causal Transformer blocks.")] = 2,
    heads: Annotated[int, typer.Option(help="Attention heads.")] = 2,
    dropout: Annotated[float, typer.Option(help="Dropout in the sequence model.")] = 0.2,
    max_len: Annotated[int, typer.Option(help="History length the model sees.")] = 50,
    min_interactions: Annotated[int, typer.Option(help="Drop users with fewer interactions.")] = 5,
    allow_missing: Annotated[
        bool, typer.Option(help="Keep items without features (needs --ids).")
    ] = False,
    user_col: Annotated[str | None, typer.Option(help="User column (default: detected).")] = None,
    item_col: Annotated[str | None, typer.Option(help="Item column (default: detected).")] = None,
    time_col: Annotated[
        str | None, typer.Option(help="Timestamp column (default: detected, optional).")
    ] = None,
    epochs: Annotated[int, typer.Option(help="Most epochs; early stopping may end sooner.")] = 50,
    batch_size: Annotated[int, typer.Option(help="Users per training batch.")] = 256,
    lr: Annotated[float, typer.Option(help="AdamW learning rate.")] = 2e-3,
    weight_decay: Annotated[float, typer.Option(help="AdamW weight decay.")] = 0.01,
    loss_weighting: Annotated[
        str,
        typer.Option(
            help="target: every predicted position weighs the same in an epoch; batch: each "
            "batch's mean, so positions in batches of long histories weigh less."
        ),
    ] = "target",
    patience: Annotated[
        int, typer.Option(help="Epochs without a better validation NDCG@10 before stopping.")
    ] = 4,
    val_users: Annotated[
        int | None,
        typer.Option(
            help="Validate each epoch on a fixed random sample of N users (default: all); "
            "the final metrics rank every user."
        ),
    ] = None,
    negatives: Annotated[
        int,
        typer.Option(help="Sampled-softmax negatives (catalogs above --full-softmax-max-items)."),
    ] = 1024,
    full_softmax_max_items: Annotated[
        int,
        typer.Option(
            help="Largest catalog trained with a full softmax (every item a candidate at every "
            "step); larger ones train with a sampled softmax of --negatives items."
        ),
    ] = 100_000,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 42,
    feature_memory_gb: Annotated[
        float | None,
        typer.Option(
            help="Keep item features, and the per-layer item embeddings validation ranks "
            "against, in memory up to this many GiB; beyond it features stream from the store "
            "and embeddings are ranked chunk by chunk from Lance (default: half the free memory)."
        ),
    ] = None,
    accelerator: Annotated[
        str, typer.Option(help="Lightning accelerator: auto, cpu, gpu.")
    ] = "auto",
    devices: Annotated[
        int,
        typer.Option(
            help="Processes per node (one per GPU, or CPU processes): above 1 trains "
            "data-parallel, each taking a slice of every batch."
        ),
    ] = 1,
    num_nodes: Annotated[int, typer.Option(help="Machines taking part (Lightning num_nodes).")] = 1,
    strategy: Annotated[
        str, typer.Option(help="Lightning strategy: auto (ddp when several processes), ddp, ...")
    ] = "auto",
    storage_option: StorageOptions = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    """Train the LinkedOut recommender from a feature dataset and interactions."""
    from linkedout.recommend.data import SplitConfig
    from linkedout.recommend.model import ModelConfig
    from linkedout.recommend.train import TrainConfig
    from linkedout.recommend.train import train as run_train
    from linkedout.storage.uri import parse_storage_options

    _quiet_lightning()
    config = TrainConfig(
        features=features,
        interactions=str(interactions),
        out=str(out),
        model=ModelConfig(
            d_model=d_model,
            fusion=fusion,
            ids=ids,
            expert_dim=expert_dim,
            whiten=whiten,
            id_dropout=id_dropout,
            token_pool=token_pool,
            top_k=top_k,
            balance_weight=balance_weight,
            blocks=blocks,
            heads=heads,
            dropout=dropout,
            max_len=max_len,
        ),
        split=SplitConfig(
            min_interactions=min_interactions, max_len=max_len, allow_missing=allow_missing
        ),
        user_col=user_col,
        item_col=item_col,
        time_col=time_col,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        loss_weighting=loss_weighting,
        patience=patience,
        val_users=val_users,
        negatives=negatives,
        full_softmax_max_items=full_softmax_max_items,
        seed=seed,
        feature_memory_gb=feature_memory_gb,
        accelerator=accelerator,
        devices=devices,
        num_nodes=num_nodes,
        strategy=strategy,
        storage_options=parse_storage_options(storage_option),
        progress=not quiet,
    )
    run = run_train(config)
    if run is not None:  # the other data-parallel ranks leave the report to the first
        _print_metrics(json.loads((run / "metrics.json").read_text()), title=str(run))


CatalogMemory = Annotated[
    float | None,
    typer.Option(
        help="Load the run's per-layer item embeddings (catalog.lance) up to this many GiB, "
        "else rank them chunk by chunk from disk (default: half the free memory)."
    ),
]


def _gib(value: float | None) -> int | None:
    if value is not None and value < 0:
        raise LinkedOutError(f"--catalog-memory-gb {value}: give a size of 0 or more")
    return None if value is None else int(value * 2**30)


@app.command()
def evaluate(
    run: Annotated[Path, typer.Argument(help="Run directory written by `linkedout train`.")],
    split: Annotated[str, typer.Option(help="valid or test.")] = "test",
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
    catalog_memory_gb: CatalogMemory = None,
) -> None:
    """Full-ranking HR/NDCG/MRR of a trained run, beside popularity and the cold-start slice."""
    from linkedout.recommend.evaluate import evaluate_run

    if split not in ("valid", "test"):
        raise LinkedOutError(f"--split {split!r}: use valid or test")
    results = evaluate_run(run, splits=(split,), memory_budget=_gib(catalog_memory_gb))
    if as_json:
        typer.echo(json.dumps(results, indent=2))
    else:
        _print_metrics(results, title=f"{run} ({split})")


@app.command()
def recommend(
    run: Annotated[Path, typer.Argument(help="Run directory written by `linkedout train`.")],
    user: Annotated[str | None, typer.Option(help="A user of the run's interactions.")] = None,
    history: Annotated[
        str | None, typer.Option(help="Watched item ids, oldest first: ID,ID,...")
    ] = None,
    k: Annotated[int, typer.Option(help="How many items.")] = 10,
    explain: Annotated[
        bool, typer.Option(help="Show the user's per-depth gate and each item's strongest depth.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
    catalog_memory_gb: CatalogMemory = None,
) -> None:
    """Top-k items for a user or a watch history."""
    from linkedout.recommend.evaluate import TrainedRun
    from linkedout.recommend.serve import recommend as run_recommend
    from linkedout.recommend.serve import user_history

    if (user is None) == (history is None):
        raise LinkedOutError("pass exactly one of --user U or --history ID,ID,...")
    trained = TrainedRun(run, _gib(catalog_memory_gb))
    items = (
        user_history(trained, user)
        if user
        else [i.strip() for i in history.split(",") if i.strip()]
    )
    result = run_recommend(trained, items, k=k, explain=explain)
    if as_json:
        typer.echo(json.dumps(asdict(result), indent=2))
        return
    if result.unknown:
        err_console.print(
            f"note: {len(result.unknown)} history item(s) unknown to this run, "
            f"ignored (e.g. {result.unknown[0]})",
            highlight=False,
        )
    table = Table(
        "#",
        "item",
        "score",
        *(["strongest layer"] if explain else []),
        title=f"top {len(result.items)} after {len(items)} watched item(s)",
        title_justify="left",
    )
    for rank, r in enumerate(result.items, 1):
        table.add_row(
            str(rank), Text(r.item_id), f"{r.score:.3f}", *([str(r.top_layer)] if explain else [])
        )
    console.print(table, highlight=False)
    if explain and result.gate:
        gates = "  ".join(f"layer {layer}: {w:.2f}" for layer, w in result.gate.items())
        console.print(f"this user's gate over depths: {gates}", highlight=False)


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


def _print_metrics(results: dict, title: str) -> None:
    names = ("HR@10", "NDCG@10", "HR@20", "NDCG@20", "MRR")
    labels = {
        "valid": "valid",
        "test": "test",
        "test_cold_start": "cold items",
        "test_unmasked": "test, unmasked",
    }
    shown = [(split, label) for split, label in labels.items() if split in results]
    users = ", ".join(
        f"{label} {results[split]['model']['users']:,}"
        for split, label in shown
        if split != "test_unmasked"
    )
    table = Table(
        title=f"{title}\nusers: {users}", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False
    )
    table.add_column("split", no_wrap=True)
    table.add_column("ranker", no_wrap=True)
    for name in names:
        table.add_column(name, no_wrap=True, justify="right")
    for split, label in shown:
        for who, name in (("model", "LinkedOut"), ("popularity", "popularity")):
            m = results[split][who]
            table.add_row(label, name, *(f"{m[n]:.4f}" for n in names))
    console.print(table, highlight=False)
    if "test_unmasked" in results:
        console.print("unmasked: earlier items stay candidates (RecBole's rule)", highlight=False)
    if "gate" in results and len(results["gate"]["layers"]) > 1:
        gates = "  ".join(
            f"{layer}: {w:.2f}"
            for layer, w in zip(results["gate"]["layers"], results["gate"]["mean"], strict=True)
        )
        console.print(f"mean gate over depths (test users): {gates}", highlight=False)


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
            f"{facts.version} ({facts.versions} kept), "
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
