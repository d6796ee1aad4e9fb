"""Approximate top-k indices for catalogs of millions, measured before any is wired in (issue 38):
recall@10 against the exact inner-product scan, single-query latency beside it, build time and
index size, on synthetic catalogs made from a trained run's real keys.

    python benchmarks/ann.py RUN [--items 1000000] [--catalogs nearcopy,mixture]
        [--indices graph,IVF_HNSW_SQ,IVF_PQ,IVF_FLAT,hnswlib] [--mips-to-l2] [--json OUT]

Catalogs (both from the run's live keys `[d + L·r]`, the vectors the service scans):
  nearcopy  each key a real key plus Gaussian noise of 0.3 of each dimension's spread: about
            items / 19,220 near-copies of every real key, which asks an index to separate
            near-duplicates (the 2026-12-04 probe's catalog);
  mixture   drawn from a Gaussian mixture fitted to the real keys (k-means, then each cluster's
            own covariance, shrunk toward its mean variance): new keys spread as real ones do,
            with no copies, closer to a catalog of distinct uploads;
  real      the run's own keys alone (19,220 on MicroLens-50K), whatever --items says.
Queries: the user vectors of real users (their histories through the trained model), so the
scores are the service's. Scores are inner products: Lance's `metric="dot"` for every index
(the pinned pylance, 14.0.3, postdates its fix to dot distances on quantised codes) and
hnswlib's `ip`, and with --mips-to-l2 also the standard reduction of maximum inner product to
nearest neighbour (keys gain a coordinate sqrt(M² - |k|²), queries a 0; then L2 order is
inner-product order). Each row says which. Latency: one query at a time in this process, as a
server answers one request.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from linkedout.service.ranker import Ranker  # noqa: E402
from linkedout.service.scan import Scan  # noqa: E402

K = 10


def real_keys_and_queries(
    run: Path, users: int, fit: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The run's live keys `[N, m]`, the user vectors `[users, m]` of its first users (the
    queries) and those of the `fit` users after them (what an index may be fitted on: never
    the queries it is measured with)."""
    ranker = Ranker(run)
    keys = ranker.snapshot.keys[1:].float()
    chosen = ranker.split.users[: users + fit]
    rows = [[ranker.snapshot.index[i] for i in ranker.history_of(u)] for u in chosen]
    vectors = []
    with torch.inference_mode():
        for at in range(0, len(rows), 512):
            h, gate = ranker._user_states(ranker.snapshot, rows[at : at + 512])
            vectors.append(ranker.model.user_vectors(h, gate).float())
    vectors = torch.cat(vectors)
    return keys, vectors[:users], vectors[users:]


def near_copies(real: torch.Tensor, items: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    base = real[torch.randint(len(real), (items,), generator=g)]
    return base + 0.3 * real.std(0) * torch.randn(base.shape, generator=g)


def mixture(
    real: torch.Tensor, items: int, clusters: int = 256, shrink: float = 0.1, seed: int = 0
) -> torch.Tensor:
    """`items` keys from a Gaussian mixture fitted to `real`: k-means centres, each cluster's
    covariance shrunk toward its mean variance (a cluster of a few dozen keys in 176
    dimensions has a singular sample covariance), weights by cluster size."""
    g = torch.Generator().manual_seed(seed)
    centres = real[torch.randperm(len(real), generator=g)[:clusters]].clone()
    for _ in range(25):
        assign = torch.cdist(real, centres).argmin(1)
        for c in range(clusters):
            members = real[assign == c]
            if len(members):
                centres[c] = members.mean(0)
    assign = torch.cdist(real, centres).argmin(1)
    sizes = torch.bincount(assign, minlength=clusters).float()
    draws = torch.multinomial(sizes / sizes.sum(), items, replacement=True, generator=g)
    out = torch.empty(items, real.shape[1])
    eye = torch.eye(real.shape[1])
    for c in range(clusters):
        where = (draws == c).nonzero().squeeze(1)
        members = real[assign == c]
        if not len(where) or len(members) < 2:
            out[where] = centres[c]
            continue
        cov = torch.cov(members.T)
        cov = (1 - shrink) * cov + shrink * cov.diagonal().mean() * eye
        factor = torch.linalg.cholesky(cov + 1e-6 * eye)
        noise = torch.randn(len(where), real.shape[1], generator=g)
        out[where] = centres[c] + noise @ factor.T
    return out


def exact(keys: torch.Tensor, queries: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Exact top-K rows of every query, and the median ms of one query's scan."""
    top = (queries @ keys.T).topk(K).indices
    times = []
    for q in queries[:50]:
        t = time.perf_counter()
        (q[None] @ keys.T).topk(K)
        times.append((time.perf_counter() - t) * 1e3)
    return top, statistics.median(times)


def served_scan(keys: torch.Tensor, queries: torch.Tensor) -> float:
    """The median ms of one query through the service's exact scan (bfloat16 candidates,
    float32 answers: linkedout/service/scan.py)."""
    scan = Scan.of(keys)
    times = []
    for q in queries[:50]:
        t = time.perf_counter()
        scan.top(q[None], K, [[]])
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def mips_to_l2(keys: torch.Tensor, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys `[k, sqrt(M² - |k|²)]`, queries `[q, 0]`: |q' - k'|² = |q|² + M² - 2 q·k, so the
    nearest keys in L2 are the largest inner products."""
    norms = keys.norm(dim=1)
    extra = (norms.max() ** 2 - norms**2).clamp_min(0).sqrt()
    return torch.cat([keys, extra[:, None]], 1), torch.cat(
        [queries, queries.new_zeros(len(queries), 1)], 1
    )


# (index, build settings, search settings to sweep); search dicts go into Lance's `nearest`.
INDICES = {
    "IVF_FLAT": ({"num_partitions": 1024}, [{"nprobes": n} for n in (8, 32, 128)]),
    "IVF_PQ": (
        {"num_partitions": 1024, "num_sub_vectors": 22},
        [{"nprobes": n, "refine_factor": r} for n, r in ((20, 10), (50, 20), (100, 40))],
    ),
    "IVF_HNSW_SQ": (
        {"num_partitions": 16, "m": 20, "ef_construction": 150},
        [
            {"nprobes": 4, "ef": 150},
            {"nprobes": 16, "ef": 300},
            {"nprobes": 16, "ef": 300, "refine_factor": 4},
        ],
    ),
    # The served index (linkedout/service/graph.py): HNSW over keys projected to the users'
    # main directions and reduced to L2, its candidates scored exactly with the full keys.
    "graph": (
        {"dims": 32, "links": 16, "build_breadth": 100},
        [
            {"candidates": c, "breadth": ef}
            for c, ef in ((100, 200), (200, 300), (400, 500), (800, 1000), (1000, 2000))
        ],
    ),
    # A graph over the whole catalog, outside Lance (`pip install hnswlib`): for comparison
    # where Lance's indices fall short.
    "hnswlib": (
        {"M": 32, "ef_construction": 200},
        [{"ef": ef} for ef in (100, 400, 1000, 2000)],
    ),
}


def probe_hnswlib(
    metric: str, keys: torch.Tensor, queries: torch.Tensor, truth: torch.Tensor
) -> dict:
    """hnswlib's HNSW over every key: `ip` (inner product) or `l2` (over MIPS-reduced keys);
    searched one query at a time on one thread, as a server answers a request."""
    try:
        import hnswlib
    except ImportError:
        sys.exit("--indices hnswlib needs hnswlib: pip install -e '.[serve]'")

    build, searches = INDICES["hnswlib"]
    index = hnswlib.Index(space="ip" if metric == "dot" else "l2", dim=keys.shape[1])
    t = time.perf_counter()
    index.init_index(max_elements=len(keys), **build)
    index.add_items(keys.numpy(), num_threads=torch.get_num_threads())
    build_s = time.perf_counter() - t
    index.set_num_threads(1)
    row = {
        "index": "hnswlib",
        "metric": "inner product" if metric == "dot" else "L2 over MIPS-reduced keys",
        "build": build,
        "build_s": round(build_s, 1),
        "index_mib": round(len(keys) * (keys.shape[1] * 4 + build["M"] * 2 * 4) / 2**20, 1),
        "search": [],
    }
    for search in searches:
        index.set_ef(search["ef"])
        hits, times = 0, []
        for i, q in enumerate(queries):
            t = time.perf_counter()
            labels, _ = index.knn_query(q.numpy(), k=K)
            times.append((time.perf_counter() - t) * 1e3)
            hits += len(set(labels[0].tolist()) & set(truth[i].tolist()))
        row["search"].append(_search_row(search, hits, len(queries), times))
        print(f"  hnswlib {metric} {json.dumps(row['search'][-1])}", flush=True)
    return row


def probe_graph(
    keys: torch.Tensor, queries: torch.Tensor, fit: torch.Tensor, truth: torch.Tensor
) -> dict:
    """The served graph index: built over every key with the projection fitted on `fit`
    (other users than the queries), searched one query at a time on one thread, each query's
    candidates scored exactly with the full keys and the best K kept."""
    import resource

    from linkedout.service.graph import GraphIndex, GraphSettings

    build, searches = INDICES["graph"]
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    index = GraphIndex.build(
        keys, fit, GraphSettings(**build), threads=max(1, torch.get_num_threads())
    )
    build_s = time.perf_counter() - t
    row = {
        "index": "graph",
        "metric": f"L2 over MIPS-reduced keys projected to {build['dims']} user-whitened dims, "
        "candidates re-scored exactly",
        "build": build,
        "build_s": round(build_s, 1),
        "index_mib": round(
            len(keys) * ((build["dims"] + 1) * 4 + build["links"] * 2 * 4) / 2**20, 1
        ),
        "peak_rss_growth_mib": round(
            (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024, 1
        ),
        "search": [],
    }
    for search in searches:
        index.graph.set_ef(search["breadth"])
        hits, times = 0, []
        for i, q in enumerate(queries):
            t = time.perf_counter()
            cand = index.candidates(q[None], search["candidates"])[0]
            scores = keys[cand] @ q
            top = cand[scores.topk(K).indices]
            times.append((time.perf_counter() - t) * 1e3)
            hits += len(set(top.tolist()) & set(truth[i].tolist()))
        row["search"].append(_search_row(search, hits, len(queries), times))
        print(f"  graph {json.dumps(row['search'][-1])}", flush=True)
    return row


def _search_row(search: dict, hits: int, queries: int, times: list[float]) -> dict:
    return {
        **search,
        "recall_at_10": round(hits / (K * queries), 4),
        "ms_p50": round(statistics.median(times), 2),
        "ms_p99": round(sorted(times)[int(0.99 * (len(times) - 1))], 2),
    }


def probe_index(
    name: str,
    metric: str,
    keys: torch.Tensor,
    queries: torch.Tensor,
    truth: torch.Tensor,
    workdir: Path,
) -> dict:
    import lance
    import numpy as np
    import pyarrow as pa

    build, searches = INDICES[name]
    build = dict(build)
    if "num_sub_vectors" in build:  # must divide the width
        build["num_sub_vectors"] = next(s for s in (22, 16, 11, 8) if keys.shape[1] % s == 0)
    path = workdir / f"{name}-{metric}.lance"
    table = pa.table(
        {
            "row": pa.array(np.arange(len(keys))),
            "keys": pa.FixedSizeListArray.from_arrays(
                pa.array(keys.numpy().reshape(-1)), keys.shape[1]
            ),
        }
    )
    ds = lance.write_dataset(table, str(path), mode="overwrite")
    t = time.perf_counter()
    ds = ds.create_index("keys", index_type=name, metric=metric, **build)
    build_s = time.perf_counter() - t
    index_bytes = sum(f.stat().st_size for f in (path / "_indices").rglob("*") if f.is_file())
    row = {
        "index": name,
        "metric": "dot" if metric == "dot" else "L2 over MIPS-reduced keys",
        "build": build,
        "build_s": round(build_s, 1),
        "index_mib": round(index_bytes / 2**20, 1),
        "search": [],
    }
    for search in searches:
        hits, times = 0, []
        for i, q in enumerate(queries):
            t = time.perf_counter()
            found = ds.to_table(
                columns=["row", "_distance"],
                nearest={"column": "keys", "q": q.numpy(), "k": K, **search},
            )
            times.append((time.perf_counter() - t) * 1e3)
            hits += len(set(found.column("row").to_pylist()) & set(truth[i].tolist()))
        row["search"].append(_search_row(search, hits, len(queries), times))
        print(f"  {name} {metric} {json.dumps(row['search'][-1])}", flush=True)
    shutil.rmtree(path, ignore_errors=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a finished run (MoE + IDs on MicroLens-50K)")
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=200, help="queries: real users' vectors")
    parser.add_argument(
        "--fit-users",
        type=int,
        default=2000,
        help="other users' vectors, what the graph index's projection is fitted on",
    )
    parser.add_argument("--catalogs", default="nearcopy,mixture")
    parser.add_argument("--indices", default="IVF_HNSW_SQ,IVF_PQ,IVF_FLAT")
    parser.add_argument(
        "--mips-to-l2",
        action="store_true",
        help="every index also over MIPS-reduced keys with the L2 metric",
    )
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    unknown = set(args.indices.split(",")) - INDICES.keys()
    if unknown:
        sys.exit(f"--indices: unknown {sorted(unknown)}; choose among {', '.join(INDICES)}")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    real, queries, fit = real_keys_and_queries(args.run, args.users, args.fit_users)
    makers = {"nearcopy": near_copies, "mixture": mixture, "real": lambda real, _: real}
    figures = {"run": str(args.run), "items": args.items, "width": real.shape[1], "catalogs": []}
    workdir = Path(tempfile.mkdtemp(prefix="linkedout-ann-"))
    try:
        for catalog in args.catalogs.split(","):
            keys = makers[catalog](real, args.items)
            truth, exact_ms = exact(keys, queries)
            served_ms = served_scan(keys, queries)
            print(
                f"{catalog}: {len(keys):,} keys, exact scan {exact_ms:.2f} ms (float32), "
                f"{served_ms:.2f} ms as served",
                flush=True,
            )
            rows = []
            reduced = mips_to_l2(keys, queries) if args.mips_to_l2 else None
            for name in args.indices.split(","):
                if name == "graph":
                    rows.append(probe_graph(keys, queries, fit, truth))
                    continue
                for metric in ("dot", "l2") if reduced is not None else ("dot",):
                    k, q = (keys, queries) if metric == "dot" else reduced
                    if name == "hnswlib":
                        rows.append(probe_hnswlib(metric, k, q, truth))
                    else:
                        rows.append(probe_index(name, metric, k, q, truth, workdir))
            figures["catalogs"].append(
                {
                    "catalog": catalog,
                    "items": len(keys),
                    "exact_ms": exact_ms,
                    "served_exact_ms": served_ms,
                    "indices": rows,
                }
            )
            if args.json:  # each finished catalog on disk at once
                args.json.write_text(json.dumps(figures, indent=2) + "\n")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
