"""`linkedout serve` measured over real HTTP on 127.0.0.1: latency and throughput of single and
batch rankings at 1, 8 and 64 concurrent clients, the time from `catalog add` to the first
response that holds the new item (the exact scan alone: benchmarks/scan.py; approximate
indices: benchmarks/ann.py).

    python benchmarks/serve.py RUN [--seconds 10] [--json out.json] [--replicas]
        [--grow-to 1000000 --index auto --compare-exact]

`--replicas` also times a `catalog add` across two servers, each on its own copy of the run,
sharing one catalog published (`catalog publish`) to a moto S3 server on 127.0.0.1.

`--grow-to N` serves a catalog of N items: the run's own and synthetic ones drawn from a
Gaussian mixture fitted to their content vectors (benchmarks/ann.py's `mixture`), added without
ID vectors and served with `--new-item-lift 0` (`--new-item-lift X` to lift them), so every
item competes on its key alone. With `--index graph|auto` the graph is built first by `linkedout
catalog index` (timed); `--compare-exact` then serves the same catalog exactly and reports the
served recall@10 of the index against it, for the same users.

RUN is a finished `linkedout train` run (for the README's figures: MoE + IDs on MicroLens-50K).
It is copied first, so the catalog changes this makes never touch it. Clients are Python
threads on the same machine as the server: on 2 cores they compete with it, so these are
figures for the whole loop, not the server alone.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.ann import mixture  # noqa: E402
from linkedout.recommend.run import RunDir  # noqa: E402
from linkedout.service.catalog_changes import add_items  # noqa: E402
from linkedout.storage import FeatureRow, FeatureStore, FeatureWriter  # noqa: E402
from linkedout.testing.s3 import free_port  # noqa: E402

LINKEDOUT = str(Path(sys.executable).with_name("linkedout"))


def start(
    run: Path, log: Path, env: dict | None = None, options: tuple[str, ...] = ()
) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen(
        [
            LINKEDOUT,
            "serve",
            str(run),
            "--port",
            str(port),
            "--poll-seconds",
            "0.2",
            "--max-in-flight",
            "128",
            *options,
        ],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"the server did not get ready: {log.read_text()[-2000:]}")


def load(url: str, clients: int, seconds: float, body) -> dict:
    """`clients` concurrent connections, each posting `body()` back to back for `seconds`.

    The clients are coroutines of one asyncio loop speaking HTTP/1.1 over keep-alive sockets,
    not threads of an HTTP library: on 2 cores they share the server's CPU, and 64 httpx
    threads spent more of it than the server did (and queued behind each other for the GIL),
    so the figures measured the clients as much as the server."""
    return asyncio.run(_load(url, clients, seconds, body))


async def _load(url: str, clients: int, seconds: float, body) -> dict:
    host, port = url.removeprefix("http://").split(":")
    latencies: list[float] = []
    server_ms: list[float] = []
    errors = 0
    stop = time.monotonic() + seconds

    async def client():
        nonlocal errors
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            while time.monotonic() < stop:
                path, payload = body()
                data = json.dumps(payload).encode()
                head = (
                    f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(data)}\r\n\r\n"
                ).encode()
                t = time.perf_counter()
                writer.write(head + data)
                status, headers = _response_head(await reader.readuntil(b"\r\n\r\n"))
                await reader.readexactly(int(headers.get("content-length", 0)))
                latencies.append((time.perf_counter() - t) * 1000)
                timing = headers.get("server-timing", "")
                if "dur=" in timing:
                    server_ms.append(float(timing.split("dur=")[1]))
                errors += status != 200
        finally:
            writer.close()

    began = time.monotonic()
    await asyncio.gather(*(client() for _ in range(clients)))
    elapsed = time.monotonic() - began
    q = statistics.quantiles(latencies, n=100)
    sq = statistics.quantiles(server_ms, n=100)
    return {
        "server_p50_ms": sq[49],
        "server_p99_ms": sq[98],
        "clients": clients,
        "requests": len(latencies),
        "errors": errors,
        "requests_per_s": len(latencies) / elapsed,
        "p50_ms": q[49],
        "p99_ms": q[98],
    }


def _response_head(raw: bytes) -> tuple[int, dict[str, str]]:
    lines = raw.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name:
            headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers


def new_items(run: Path, workdir: Path, prefix: str = "new") -> tuple[Path, list[str], list[str]]:
    """Copies of a few stored items under new ids, as a feature dataset: its path, the
    originals' ids and the copies'."""
    config = RunDir(run).config()
    source = FeatureStore.open(config.train["features"])
    originals = source.ids()[:8]
    tokens = source.read_tokens(originals)
    path = workdir / f"{prefix}.lance"
    copies = FeatureStore.create(path, source.manifest)
    new = [f"{prefix}-{i}" for i in originals]
    with FeatureWriter(copies, commit_every=100) as w:
        for item, t in zip(new, tokens, strict=True):
            w.add(FeatureRow(item, t, content_sha256=item))
    return path, originals, new


def time_to_new_item(run: Path, urls: list[str], workdir: Path, prefix: str = "new") -> dict:
    """A few new items added with `catalog add`: seconds to commit them (the checkpoint
    loaded, the items embedded) and until a ranking from each server in `urls` returns one."""
    features, originals, new = new_items(run, workdir, prefix)
    began = time.perf_counter()
    change = add_items(run, str(features))
    committed = time.perf_counter() - began
    ranked = [None] * len(urls)
    clients = [httpx.Client(base_url=url, timeout=30) for url in urls]
    while None in ranked and time.perf_counter() - began < 60:
        for j, http in enumerate(clients):
            if ranked[j] is None:
                body = http.post("/recommend", json={"history": [originals[0]], "k": 1000})
                if any(i["item_id"] in new for i in body.json().get("items", [])):
                    ranked[j] = time.perf_counter() - began
    for http in clients:
        http.close()
    return {
        "added": change.added,
        "catalog_add_s": committed,
        "first_ranking_with_it_s": ranked[0] if len(urls) == 1 else ranked,
    }


def replicas(run: Path, workdir: Path) -> dict:
    """Two servers, each on its own copy of the run, sharing one catalog published to an
    S3-compatible server (moto, started here on 127.0.0.1): `time_to_new_item` across both."""
    from linkedout.service.catalog_changes import publish_catalog
    from linkedout.testing.s3 import CREDENTIALS, REGION, make_bucket, moto_server

    # Each host gives its credentials in the environment, never in the run; this process's
    # catalog add reads the store too.
    credentials = {key.upper(): value for key, value in CREDENTIALS.items()}
    credentials["AWS_REGION"] = REGION
    os.environ.update(credentials)
    servers = []
    with moto_server() as endpoint:
        try:
            options = make_bucket(endpoint, "bench")
            published = Path(shutil.copytree(run, workdir / "published"))
            publish_catalog(published, "s3://bench/catalog.lance", options)
            for name in ("host-a", "host-b"):
                host = Path(shutil.copytree(published, workdir / name))
                shutil.rmtree(host / "catalog.lance")
                servers.append(start(host, workdir / f"{name}.log", credentials))
            urls = [url for _, url in servers]
            return time_to_new_item(published, urls, workdir, "replicated")
        finally:
            for proc, _ in servers:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=60)


def grow_catalog(run: Path, items: int) -> int:
    """Appends synthetic items to `run`'s catalog (a copy) until it holds `items`; returns
    how many were added."""
    catalog = RunDir(run).catalog_dataset()
    ids, experts = catalog.live()
    layers, width = experts.shape[1:]
    count = items - len(ids)
    if count <= 0:
        return 0
    drawn = mixture(experts.flatten(1).float(), count).unflatten(1, (layers, width))
    catalog.append([f"synthetic-{j}" for j in range(count)], iter(drawn.split(100_000)))
    return count


def build_index(run: Path, lift: float) -> float:
    """`linkedout catalog index RUN` for servers ranking with `--new-item-lift lift`, timed in
    seconds."""
    began = time.perf_counter()
    command = [LINKEDOUT, "catalog", "index", str(run), "--new-item-lift", str(lift)]
    subprocess.run(command, check=True)
    return time.perf_counter() - began


def served_recall(found: dict[str, list[str]], exact: dict[str, list[str]]) -> float:
    """Share of each user's exact top 10 that the index's served top 10 holds."""
    hits = sum(len(set(found[u]) & set(exact[u])) for u in exact)
    return hits / sum(len(v) for v in exact.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", default="1,8,64")
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--replicas",
        action="store_true",
        help="also time a catalog add across two servers sharing a catalog published to a "
        "local S3-compatible server (moto, from the dev extra)",
    )
    parser.add_argument(
        "--workers", type=int, default=0, help="serve --workers N (default: serve's own)"
    )
    parser.add_argument(
        "--only-single", action="store_true", help="single requests only (no batches of 32)"
    )
    parser.add_argument(
        "--only-replicas", action="store_true", help="skip the load and scan figures"
    )
    parser.add_argument(
        "--grow-to", type=int, default=0, help="serve a catalog of this many items (see above)"
    )
    parser.add_argument(
        "--index", default="", help="serve --index MODE (default: serve's own, auto)"
    )
    parser.add_argument(
        "--new-item-lift",
        type=float,
        default=0.0,
        help="with --grow-to: the lift to serve with (0: the synthetic items, which have no "
        "ID vector, compete on their keys alone; the run's own, e.g. 0.25, lifts them all)",
    )
    parser.add_argument(
        "--compare-exact",
        action="store_true",
        help="with --grow-to: serve the catalog exactly too, and report the served recall@10",
    )
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="linkedout-serve-bench-"))
    run = Path(shutil.copytree(args.run, workdir / "run"))
    results = {"cpus": os.cpu_count()}
    options = ("--workers", str(args.workers)) if args.workers else ()
    if args.grow_to:
        results["synthetic_items"] = grow_catalog(run, args.grow_to)
        options += ("--new-item-lift", str(args.new_item_lift))
        results["new_item_lift"] = args.new_item_lift
        if args.index in ("graph", "auto"):
            results["index_build_s"] = build_index(run, args.new_item_lift)
            print(f"graph index built in {results['index_build_s']:.1f} s", flush=True)
    if args.index:
        options += ("--index", args.index)
    exact = None
    if args.compare_exact:  # first: the graph's run then adds items (the new-item timing)
        if args.index in ("", "exact"):
            parser.error("--compare-exact compares an index: give --index graph or auto")
        exact_options = (*options[: options.index("--index")], "--index", "exact")
        exact = serving(run, workdir, args.clients, args.seconds, exact_options, True)
    if not args.only_replicas:
        results |= serving(run, workdir, args.clients, args.seconds, options, args.only_single)
        results["serve_options"] = list(options)
    if exact is not None:
        results["exact"] = {key: exact[key] for key in ("catalog_items", "index", "single")}
        results["served_recall_at_10"] = served_recall(results["top10"], exact["top10"])
        print(f"served recall@10 {results['served_recall_at_10']:.4f}", flush=True)
    results.pop("top10", None)
    if args.replicas or args.only_replicas:
        results["new_item_two_replicas"] = replicas(run, workdir)
        print("new item, two replicas", json.dumps(results["new_item_two_replicas"]), flush=True)
    shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))


def serving(
    run: Path,
    workdir: Path,
    clients_list: str,
    seconds: float,
    options: tuple[str, ...] = (),
    only_single: bool = False,
) -> dict:
    """One server on `run`: latency and throughput at each number of clients, the time to a
    new item, and the exact scan at 20k and 1M items of the run's width."""
    proc, url = start(run, workdir / "serve.log", options=options)
    try:
        meta = httpx.get(f"{url}/metadata").json()
        users = [u for u in RunDir(run).split().users]
        rng = random.Random(0)

        def single():
            return "/recommend", {"user": rng.choice(users), "k": 10}

        def batch():
            return "/recommend/batch", {
                "requests": [{"user": rng.choice(users), "k": 10} for _ in range(32)]
            }

        results: dict = {
            "catalog_items": meta["catalog"]["size"],
            "index": meta["index"],
            "single": [],
            "batch_of_32": [],
        }
        load(url, 4, 2.0, single)  # warm up
        for clients in map(int, clients_list.split(",")):
            kinds = (("single", single),) + (() if only_single else (("batch_of_32", batch),))
            for name, body in kinds:
                figures = load(url, clients, seconds, body)
                results[name].append(figures)
                print(
                    name,
                    json.dumps(
                        {k: round(v, 2) if isinstance(v, float) else v for k, v in figures.items()}
                    ),
                    flush=True,
                )
        with httpx.Client(base_url=url, timeout=30) as http:  # the same users, every server
            results["top10"] = {
                u: [i["item_id"] for i in http.post("/recommend", json={"user": u}).json()["items"]]
                for u in users[:200]
            }
        if "--index" not in options or options[options.index("--index") + 1] != "exact":
            results["new_item"] = time_to_new_item(run, [url], workdir)
            print("new item", json.dumps(results["new_item"]), flush=True)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    return results


if __name__ == "__main__":
    main()
