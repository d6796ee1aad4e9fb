"""Collect one benchmark run's figures into a results JSON, BENCHMARKS.md and plots.

    python benchmarks/report.py out/benchmark            # -> benchmarks/results/, BENCHMARKS.md
    python benchmarks/report.py out/benchmark-quick --into out/benchmark-quick
    python benchmarks/report.py --results benchmarks/results/DATE-MACHINE.json  # re-render only

Reads OUT/{storage,extract,microlens,serve}.json and, when `make benchmark-peers` ran on the same
split, OUT/peers/recbole_sasrec.json and OUT/peers/unisrec-{transductive,inductive,fdsa}.json.
Every number in the markdown comes from those files. `--results` renders BENCHMARKS.md and the
plots again from a results JSON written earlier (after a change to this report; no out/ needed),
and leaves that JSON as it is.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import environment  # noqa: E402

# MicroLens paper, Table 2 (MicroLens-100K: another, larger subset; history masked).
PAPER_100K = (
    ("SASRec (ID)", 0.0909, 0.0517),
    ("GRU4Rec (ID)", 0.0782, 0.0423),
    ("GRU4Rec_V (best end-to-end video model)", 0.0954, 0.0517),
)
MAIN = ("ids", "moe", "moe+ids")
CONTENT_PEERS = ("transductive", "inductive", "fdsa")
"""`benchmarks/peers/unisrec.py --row`: OUT/peers/unisrec-ROW.json, in the table's order."""
OURS_BESIDE = {"transductive": "moe+ids", "inductive": "moe", "fdsa": "moe+ids"}
"""The LinkedOut row each content-aware peer row is set beside."""
FIGURES = ("gates.png", "fusion_hr10.png", "training_curves.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, nargs="?", help="the benchmark's output folder")
    parser.add_argument("--into", type=Path, help="write everything here instead of the repository")
    parser.add_argument(
        "--results",
        type=Path,
        help="render again from this results JSON (written by an earlier report) instead of OUT",
    )
    parser.add_argument(
        "--share",
        type=Path,
        help="with --results: add the sharing figures of benchmarks/share.py --json FILE",
    )
    args = parser.parse_args()
    if (args.out is None) == (args.results is None):
        parser.error("give the benchmark's output folder or --results FILE, not both")
    if args.results:
        rerender(args.results, args.into, args.share)
        return
    figures = {
        name: json.loads((args.out / f"{name}.json").read_text())
        for name in (
            "storage",
            "extract",
            "microlens",
            "serve",
            "scan",
            "ann",
            "serve-index",
            "new-uploads",
            "share",
        )
        if (args.out / f"{name}.json").exists()
    }
    probes = sorted(args.out.glob("serve-ann*.json"))
    if "serve" in figures and probes:
        figures["serve"]["ann_probes"] = [json.loads(p.read_text()) for p in probes]
    if "microlens" not in figures:
        sys.exit(f"{args.out}/microlens.json is missing: run benchmarks/microlens.py first")
    peer = args.out / "peers" / "recbole_sasrec.json"
    if peer.exists():
        peer_figures = json.loads(peer.read_text())
        if peer_figures["split"]["sha256"] != figures["microlens"]["dataset"]["split"]["sha256"]:
            print(f"ignoring {peer}: it ran on another split", file=sys.stderr)
        else:
            figures["peer_recbole_sasrec"] = peer_figures
    content_peers = []
    for row in CONTENT_PEERS:
        path = args.out / "peers" / f"unisrec-{row}.json"
        if path.exists():
            result = json.loads(path.read_text())
            if result["split"]["sha256"] != figures["microlens"]["dataset"]["split"]["sha256"]:
                print(f"ignoring {path}: it ran on another split", file=sys.stderr)
            elif result["split"]["subset"]:
                print(f"ignoring {path}: it ran on a subset of the users", file=sys.stderr)
            else:
                content_peers.append(result)
    if content_peers:
        figures["content_peers"] = content_peers
    stamp = dt.date.today().isoformat()
    machine = f"{platform.machine()}-{environment()['cpus']}cpu"
    if args.into:
        results, markdown, plots = (
            args.into / "results.json",
            args.into / "BENCHMARKS.md",
            args.into,
        )
    else:
        results = REPO / "benchmarks" / "results" / f"{stamp}-{machine}.json"
        markdown, plots = REPO / "BENCHMARKS.md", REPO / "benchmarks" / "figures"
    quick = figures["microlens"]["dataset"].get("quick", False)
    command = "make benchmark-quick" if quick else "make benchmark"
    figures["generated"] = {"date": stamp, "machine": machine, "command": command}
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps(figures, indent=2) + "\n")
    plots.mkdir(parents=True, exist_ok=True)
    plot_all(figures["microlens"], plots)
    markdown.write_text(render(figures, results, plots, markdown.parent))
    print(f"wrote {results}, {markdown} and {', '.join(str(plots / f) for f in FIGURES)}")


def _refuse(line: str) -> None:
    print(line, file=sys.stderr)
    sys.exit(2)


def rerender(results: Path, into: Path | None, share: Path | None = None) -> None:
    """BENCHMARKS.md and the plots again from a results JSON; its figures and its date stay
    (with `share`, a later benchmarks/share.py run's figures are added)."""
    try:
        figures = json.loads(results.read_text())
        if share is not None:
            figures["share"] = json.loads(share.read_text())
    except (OSError, ValueError) as e:
        _refuse(f"--results {results} / --share {share}: not a readable results JSON ({e})")
    if "microlens" not in figures or "generated" not in figures:
        _refuse(f"--results {results}: not written by benchmarks/report.py (no microlens figures)")
    markdown, plots = (
        (into / "BENCHMARKS.md", into)
        if into
        else (REPO / "BENCHMARKS.md", REPO / "benchmarks" / "figures")
    )
    plots.mkdir(parents=True, exist_ok=True)
    plot_all(figures["microlens"], plots)
    markdown.write_text(render(figures, results.resolve(), plots, markdown.parent))
    print(f"wrote {markdown} and {', '.join(str(plots / f) for f in FIGURES)} from {results}")


# -- markdown -------------------------------------------------------------------------------


def render(figures: dict, results: Path, plots: Path, base: Path) -> str:
    ml = figures["microlens"]
    rows = {r["key"]: r for r in ml["rows"]}
    split = ml["dataset"]["split"]
    protocol = ml["protocol"]
    env = ml["environment"]
    v = env["versions"]
    out = [
        "# LinkedOut benchmarks",
        "",
        f"Generated by `{figures['generated']['command']}` on {figures['generated']['date']}: "
        f"{env['cpu']}, "
        f"{env['cpus']} cores, {'GPU ' + env['gpu'] if env['gpu'] else 'no GPU'}; "
        f"Python {env['python']}, torch {v['torch']}, transformers {v['transformers']}, "
        f"pylance {v['pylance']}, lightning {v['lightning']}. Every figure: "
        f"[`{_rel(results, base)}`]({_rel(results, base)}). Do not edit this file by hand.",
        "",
        "## Quality on MicroLens-50K",
        "",
        f"{split['users']:,} users, {split['items']:,} items, {split['interactions']:,} "
        f"interactions ({_users_taken(ml['dataset']['users_taken'])}). "
        f"{split['protocol'][0].upper()}{split['protocol'][1:]}; the "
        "user's earlier items are masked before ranking, ties count against the target. Split "
        f"sha256 `{split['sha256'][:12]}`, identical for every row (checked). Item features: "
        f"{ml['extraction']['model']} over the titles, depths "
        f"{_span(ml['extraction']['layers'])}, {ml['extraction']['tokens_per_layer']} tokens "
        "per depth, through `linkedout extract --texts` into Lance.",
        "",
        f"Training: `linkedout train` with batch {protocol['batch_size']}, lr {protocol['lr']}, "
        f"at most {protocol['epochs']} epochs, early stopping after {protocol['patience']} "
        "epochs without a better validation NDCG@10"
        + (
            f" (validated on {protocol['val_users']:,} fixed random users; final metrics rank "
            "every user)"
            if protocol["val_users"]
            else ""
        )
        + (
            f". Main rows: mean ± std over seeds {_seeds(protocol['seeds'])}; other rows: seed "
            f"{protocol['seeds'][0]}."
            if len(protocol["seeds"]) > 1
            else f". One seed ({protocol['seeds'][0]}); `make benchmark` reports the spread."
        ),
        "",
        "| model | HR@10 | NDCG@10 | HR@20 | NDCG@20 | cold items HR@10 | cold NDCG@10 | long "
        "tail HR@10 | long tail NDCG@10 | best / stopped epoch |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    pop = ml["popularity"]
    out.append(
        "| popularity | "
        + " | ".join(f"{pop['test'][m]:.4f}" for m in ("HR@10", "NDCG@10", "HR@20", "NDCG@20"))
        + "".join(
            f" | {pop[view][m]:.4f}" if view in pop else " | -"
            for view in ("test_cold_start", "test_long_tail")
            for m in ("HR@10", "NDCG@10")
        )
        + " | - |"
    )
    for key in ("ids", "moe", "moe+ids", "mean"):
        if key in rows:
            out.append(_quality_row(rows[key]))
    layer_rows = [r for r in ml["rows"] if r["key"].startswith("layer:")]
    if layer_rows:
        best = max(layer_rows, key=lambda r: r["mean"]["valid"]["NDCG@10"])
        out.append(_quality_row(best, note=" (best single depth, by validation)"))
        out.append(_quality_row(layer_rows[-1], note=" (the last depth)"))
    if ml.get("rows_not_run"):
        out += [
            "",
            f"Not run for these figures (`benchmarks/microlens.py --rows` took a subset): "
            f"{', '.join(ml['rows_not_run'])}.",
        ]
    if ml.get("runs_missing"):
        out += [
            "",
            "**Partial report: runs still missing** (the benchmark was stopped or is still "
            "running; `make benchmark` continues from the finished runs): "
            f"{'; '.join(ml['runs_missing'])}.",
        ]
    out += _wall_times(ml["rows"])
    out += _goals(rows, layer_rows, figures.get("peer_recbole_sasrec"))
    cold = pop["test_cold_start"]
    out += [
        "",
        f"Cold items: the {cold['users']:,} test users whose target never occurs in training. "
        "ID-only models cannot place such items; content can.",
        "",
        "![HR@10 by fusion mode](" + _rel(plots / "fusion_hr10.png", base) + ")",
        "",
    ]
    if "new-uploads" in figures:
        out += _new_uploads_table(figures["new-uploads"])
    if layer_rows:
        out += _layer_table(layer_rows, rows, _rel(plots / "gates.png", base))
    if ml.get("ablations"):
        out += _ablation_table(ml["ablations"], rows)
    if "content_peers" in figures:
        out += _content_peer_table(figures["content_peers"], rows)
    else:
        out += [
            "### Beside the content-aware peers",
            "",
            "Not run for these figures: `make benchmark-peers` trains UniSRec (text + IDs and "
            "text only) and FDSA on the same split and MiniLM title vectors.",
            "",
        ]
    if "peer_recbole_sasrec" in figures:
        out += _peer_table(figures["peer_recbole_sasrec"], rows, pop, protocol["epochs"])
    else:
        out += [
            "### Beside RecBole",
            "",
            "Not run for these figures: `make benchmark-peers` trains RecBole's SASRec on the "
            "same split files and adds its row here.",
            "",
        ]
    out += [
        "### Context: the MicroLens paper (a different subset)",
        "",
        "MicroLens-**100K**, Table 2 of the MicroLens paper (leave-one-out, full ranking, history "
        "masked). Another, larger subset with other users: context, not a comparison.",
        "",
        "| model (MicroLens-100K) | HR@10 | NDCG@10 |",
        "|---|---|---|",
        *(f"| {name} | {hr:.4f} | {ndcg:.4f} |" for name, hr, ndcg in PAPER_100K),
        "",
        "![Training curves](" + _rel(plots / "training_curves.png", base) + ")",
        "",
    ]
    out += _speed(figures, ml)
    if "serve" in figures:
        out += serving_section(figures["serve"])
    if "scan" in figures:
        out += scan_section(figures["scan"])
    if "ann" in figures:
        out += index_section(figures["ann"], figures.get("serve-index"))
    if "share" in figures:
        out += ["", *sharing_section(figures["share"])]
    return "\n".join(out) + "\n"


def sharing_section(share: dict) -> list[str]:
    """`benchmarks/share.py`'s figures: subset export, merge, verify, reads from S3."""
    layers, tokens, dim = share["shape"]
    gb = 1e9
    one, whole = share["export"]["one_depth"], share["export"]["whole"]
    read = share["read"]
    local, s3 = read["local"], read["s3"]
    stamp = share.get("date", "")
    return [
        "## Sharing a feature dataset",
        "",
        f"A synthetic dataset of {share['rows']:,} rows of [{layers}, {tokens}, {dim}] "
        f"{share['dtype']} ({share['write']['bytes'] / gb:.2f} GB on disk; "
        f"`benchmarks/share.py --rows {share['rows']}`{', ' + stamp if stamp else ''}). Each "
        "export and the merge verify what they wrote, included in their time.",
        "",
        "| step | bytes written | seconds | rate |",
        "|---|---|---|---|",
        f"| export, whole dataset | {whole['bytes'] / gb:.2f} GB | {whole['seconds']:.1f} | "
        f"{share['rows'] / whole['seconds']:,.0f} rows/s |",
        f"| export `--layers {share['export']['depth']}` (1 depth of {layers}) | "
        f"{one['bytes'] / gb:.2f} GB | {one['seconds']:.1f} | "
        f"{share['rows'] / one['seconds']:,.0f} rows/s |",
        f"| merge of two halves (cut with `--where`) | - | {share['merge']['seconds']:.1f} | "
        f"{share['merge']['rows_per_s']:,.0f} rows/s |",
        f"| verify (every digest) | - | {share['verify']['seconds']:.1f} | "
        f"{share['verify']['rows_per_s']:,.0f} rows/s, {share['verify']['mb_per_s']:,.0f} MB/s |",
        "",
        f"Training's input read, 1 depth of every item of a {read['rows']:,}-row dataset "
        f"({read['dataset_bytes'] / gb:.2f} GB; the tensors read are "
        f"{read['tensor_bytes'] / 1e6:,.0f} MB), as `train --fusion layer:K` loads it (median "
        f"of {len(read['local'].get('all_seconds', [0]))} fresh opens):",
        "",
        "| from | seconds | bytes Lance read | reads |",
        "|---|---|---|---|",
        f"| local disk (page cache warm) | {local['seconds']:.2f} | "
        f"{local['read_bytes'] / 1e6:,.0f} MB | {local['read_iops']:,} |",
        f"| S3-compatible server on 127.0.0.1 (moto) | {s3['seconds']:.2f} | "
        f"{s3['read_bytes'] / 1e6:,.0f} MB | {s3['read_iops']:,} |",
    ]


def _server_ms(f: dict) -> str:
    if "server_p50_ms" not in f:  # figures from before Server-Timing
        return "-"
    return f"{f['server_p50_ms']:.1f} / {f['server_p99_ms']:.1f}"


def serving_section(serve: dict) -> list[str]:
    """`benchmarks/serve.py`'s figures: HTTP latency and throughput, new items, exact scan."""
    out = [
        "## Serving",
        "",
        f"`linkedout serve` on {serve.get('run', 'the MoE + IDs run')}, "
        f"{serve['catalog_items']:,} items, real HTTP "
        f"clients on 127.0.0.1 sharing the server's {serve['cpus']} cores "
        "(`benchmarks/serve.py RUN`).",
        "",
        "| request | clients | requests/s | users/s | p50 ms | p99 ms | server p50 / p99 ms "
        "| errors |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, users in (("single", 1), ("batch_of_32", 32)):
        for f in serve[name]:
            out.append(
                f"| {name.replace('_', ' ')} | {f['clients']} | {f['requests_per_s']:.0f} | "
                f"{f['requests_per_s'] * users:,.0f} | {f['p50_ms']:.1f} | {f['p99_ms']:.1f} | "
                f"{_server_ms(f)} | {f['errors']} |"
            )
    if "before" in serve:
        out += ["", *load_comparison(serve["before"], serve, serve.get("before_note", ""))]
    new = serve["new_item"]
    out += [
        "",
        f"`catalog add` of {new['added']} new items: committed in {new['catalog_add_s']:.1f} s "
        "(checkpoint loaded, items embedded), first ranking that returns one "
        f"{new['first_ranking_with_it_s']:.1f} s after the command started.",
        "",
    ]
    if "exact_scan" in serve:  # serve.py's float32 scan, before benchmarks/scan.py
        out += [
            "Exact top-10 scan, one query: "
            + "; ".join(
                f"{s['items']:,} items x {s['width']} dims {s['ms_per_query']:.2f} ms"
                for s in serve["exact_scan"]
            )
            + " (float32, random keys). No approximate index yet.",
            "",
        ]
    for probe in serve.get("ann_probes", []):
        steps = probe["ann"]
        out += [
            f"Approximate index probe (`benchmarks/serve.py RUN --ann-items {probe['items']} "
            f"--ann-index {probe.get('index', 'IVF_PQ')}`): {probe.get('index', 'IVF_PQ')} over "
            f"{probe['items']:,} keys {probe['width']} wide made from the run's real keys plus "
            f"noise, built in {probe['build_s']:.0f} s; recall@10 against the exact scan "
            + " / ".join(f"{a['recall_at_10']:.2f}" for a in steps)
            + " at nprobes "
            + " / ".join(str(a["nprobes"]) for a in steps)
            + ", "
            + " / ".join(f"{a['ms']:.1f}" for a in steps)
            + f" ms per query against {probe['exact_ms']:.1f} ms exact.",
            "",
        ]
    return out


def load_comparison(before: dict, after: dict, note: str) -> list[str]:
    """Single requests before and after a change, measured one after the other (`note`: which
    change, and how)."""
    out = [
        f"Single requests before and after {note}:",
        "",
        "| code | clients | requests/s | p50 ms | p99 ms | server p50 / p99 ms |",
        "|---|---|---|---|---|---|",
    ]
    for name, figures in (("before", before), ("after", after)):
        out += [
            f"| {name} | {f['clients']} | {f['requests_per_s']:.0f} | {f['p50_ms']:.1f} | "
            f"{f['p99_ms']:.1f} | {_server_ms(f)} |"
            for f in figures["single"]
        ]
    return out + [""]


def scan_section(scan: dict) -> list[str]:
    """`benchmarks/scan.py`: the served exact scan (bfloat16 candidates, float32 answers) beside
    the float32 scan, one torch thread."""
    out = [
        "Exact top-10 scan as served (`benchmarks/scan.py RUN`, one thread; bfloat16 candidates "
        "rescored in float32, each user's top 10 proven by a rounding bound or scanned again in "
        "float32), ms per pass of real users' vectors:",
        "",
        "| catalog | items | users a pass | float32 scan ms | served scan ms | users proven by "
        "bfloat16 | top 10 equal to float32 |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, c in scan["catalogs"].items():
        for b in c["batches"]:
            out.append(
                f"| {name} | {c['items']:,} | {b['users_per_pass']} | {b['float32_ms']:.2f} | "
                f"{b['served_ms']:.2f} | {c['proven_by_bfloat16']} of {c['users']} | "
                f"{'yes' if c['top10_equal_to_float32'] else 'no'} |"
            )
    return out + [""]


def index_section(ann: dict, served: dict | None) -> list[str]:
    """`benchmarks/ann.py --indices graph`: the served graph index on synthetic 1M catalogs;
    `benchmarks/serve.py --grow-to`: the same over HTTP beside the exact scan."""
    out = [
        "Graph index (`linkedout catalog index`; `benchmarks/ann.py RUN --indices graph`): "
        f"recall@10 against the exact scan, one query at a time on one thread, {ann['width']} "
        "wide keys; `mixture` draws keys from a Gaussian mixture fitted to the run's real keys, "
        "`nearcopy` copies real keys with noise (near-duplicates, the harder case).",
        "",
        "| catalog | items | build s | index MiB | candidates | breadth | recall@10 | ms p50 | "
        "ms p99 | exact scan ms, served (float32) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in ann["catalogs"]:
        for row in c["indices"]:
            if row["index"] != "graph":
                continue
            for s in row["search"]:
                out.append(
                    f"| {c['catalog']} | {c['items']:,} | {row['build_s']:.0f} | "
                    f"{row['index_mib']:.0f} | {s['candidates']} | {s['breadth']} | "
                    f"{s['recall_at_10']:.3f} | {s['ms_p50']:.2f} | {s['ms_p99']:.2f} | "
                    f"{c['served_exact_ms']:.1f} ({c['exact_ms']:.1f}) |"
                )
    if not served:
        return out + [""]
    out += [
        "",
        f"Served over HTTP (`benchmarks/serve.py RUN --grow-to {served['catalog_items']:,} "
        "--index auto --compare-exact`): the run's items and synthetic ones from the mixture, "
        "`--new-item-lift 0` so the graph holds every item; graph built by `linkedout catalog "
        f"index` in {served['index_build_s']:.0f} s; served recall@10 against the exact "
        f"server, same users: {served['served_recall_at_10']:.4f}.",
        "",
        "| clients | exact: requests/s, p99 ms, server p50 / p99 ms | graph: requests/s, p99 ms, "
        "server p50 / p99 ms |",
        "|---|---|---|",
    ]
    for e, g in zip(served["exact"]["single"], served["single"], strict=True):
        out.append(
            f"| {g['clients']} | {e['requests_per_s']:,.0f}, {e['p99_ms']:.1f}, "
            f"{_server_ms(e)} | {g['requests_per_s']:,.0f}, {g['p99_ms']:.1f}, {_server_ms(g)} |"
        )
    if served.get("new_item"):
        out += [
            "",
            f"{served['new_item']['first_ranking_with_it_s']:.2f} s from `catalog add` to the "
            "first ranking through the graph that returns a new item (scanned exactly beside "
            "it until a rebuild).",
        ]
    return out + [""]


GOAL = 1.10  # LinkedOut (content + IDs) over the better converged ID-only SASRec
COLD_FLOOR = 0.012  # content rows' cold HR@10 in the 2026-11-24 benchmark


def _wall_times(rows: list[dict]) -> list[str]:
    """What the table cost: every run's wall time (setup and final evaluation included), the
    main rows' and the other rows' sums."""
    main = [r for r in rows if r["key"] in MAIN]
    other = [r for r in rows if r not in main]

    def minutes(group: list[dict]) -> float:
        return sum(run["wall_seconds"] for r in group for run in r["runs"]) / 60

    def each(group: list[dict]) -> str:
        return "; ".join(
            f"{r['key']} " + ", ".join(f"{run['wall_seconds'] / 60:.1f}" for run in r["runs"])
            for r in group
        )

    if not rows:
        return []
    line = (
        f"Wall time of the training runs (one after another on this machine, setup and final "
        f"evaluation included): main rows **{minutes(main):.0f} min** ({each(main)} min)"
    )
    if other:
        line += (
            f", the other rows {minutes(other):.0f} min ({each(other)} min), "
            f"**{minutes(main) + minutes(other):.0f} min** in all"
        )
    return ["", line + "."]


def _goals(rows: dict, layer_rows: list[dict], peer: dict | None) -> list[str]:
    """The ratios the benchmark is judged by, each computed from the rows above."""
    if not {"ids", "moe+ids"} <= rows.keys():
        return []
    test = {k: rows[k]["mean"]["test"] for k in rows}
    out = ["", "What these rows show (test, history masked, means over seeds):", ""]
    for metric in ("HR@10", "NDCG@10"):
        ours = test["ids"][metric]
        theirs = peer["test"]["history_masked"][metric] if peer else None
        best, who = (
            (ours, "our SASRec") if theirs is None or ours >= theirs else (theirs, "RecBole's")
        )
        ratio = test["moe+ids"][metric] / best
        out.append(
            f"- **LinkedOut MoE + IDs over the better ID-only SASRec ({who}), {metric}: "
            f"{ratio:.3f}x** (goal {GOAL:.2f}x: {'met' if ratio >= GOAL else 'not met'})."
        )
        if theirs is not None:
            out.append(
                f"- Our ID-only SASRec over RecBole's, {metric}: {ours / theirs:.3f}x "
                f"({'at least equal' if ours >= theirs else 'below'})."
            )
    if "moe" in rows and layer_rows:
        best = max(layer_rows, key=lambda r: r["mean"]["valid"]["NDCG@10"])
        last = layer_rows[-1]
        moe = test["moe"]["NDCG@10"]
        for name, row in (("the best single depth", best), ("the last depth", last)):
            other = row["mean"]["test"]["NDCG@10"]
            verdict = "above" if moe > other else "not above"
            out.append(
                f"- Cross-layer MoE (content only) over {name} ({row['name']}), NDCG@10: "
                f"{moe / other:.3f}x ({verdict})."
            )
    cold = {
        name: rows[k]["mean"]["test_cold_start"]["HR@10"]
        for k, name in (("moe", "content only"), ("moe+ids", "MoE + IDs"))
        if "test_cold_start" in rows.get(k, {}).get("mean", {})
    }
    if cold:
        out.append(
            "- Cold items, HR@10: "
            + ", ".join(f"{name} {v:.4f}" for name, v in cold.items())
            + f" (floor {COLD_FLOOR}: {'kept' if min(cold.values()) >= COLD_FLOOR else 'missed'})."
        )
    tail = {
        name: rows[k]["mean"]["test_long_tail"]
        for k, name in (("ids", "ID only"), ("moe", "content only"), ("moe+ids", "MoE + IDs"))
        if "test_long_tail" in rows.get(k, {}).get("mean", {})
    }
    if len(tail) == 3:
        fused = tail.pop("MoE + IDs")
        met = all(fused[m] >= max(t[m] for t in tail.values()) for m in ("HR@10", "NDCG@10"))
        out.append(
            "- Long tail (test targets with 1-5 training interactions), HR@10 / NDCG@10: "
            + ", ".join(f"{name} {t['HR@10']:.4f} / {t['NDCG@10']:.4f}" for name, t in tail.items())
            + f", MoE + IDs {fused['HR@10']:.4f} / {fused['NDCG@10']:.4f} (goal: MoE + IDs at "
            f"least the better of the two: {'met' if met else 'not met'})."
        )
    return out


def _quality_row(row: dict, note: str = "") -> str:
    cells = [_pm(row, "test", m) for m in ("HR@10", "NDCG@10", "HR@20", "NDCG@20")]
    for view in ("test_cold_start", "test_long_tail"):
        cells += [_pm(row, view, m) if view in row["mean"] else "-" for m in ("HR@10", "NDCG@10")]
    # Epochs count from 1 here; the best one is the checkpoint kept.
    epochs = ", ".join(f"{r['best_epoch'] + 1}/{r['epochs']}" for r in row["runs"])
    return f"| {row['name']}{note} | " + " | ".join(cells) + f" | {epochs} |"


def _pm(row: dict, view: str, metric: str) -> str:
    mean, std = row["mean"][view][metric], row["std"][view][metric]
    return f"{mean:.4f}" if std is None else f"{mean:.4f} ± {std:.4f}"


def _new_uploads_table(nu: dict) -> list[str]:
    """The new-uploads protocol (benchmarks/new_uploads.py): each row's ranking of items none
    of whose interactions it trained on."""
    p = nu["protocol"]
    out = [
        "### New uploads: items the model never trained on",
        "",
        f"A seeded random {p['fraction']:.0%} of the items ({p['items_new']['test']:,}) are new "
        f"uploads for the test and a disjoint {p['valid_fraction']:.0%} "
        f"({p['items_new']['valid']:,}) for validation: none of their interactions is trained on, "
        "their features are in the feature dataset. Each user who watched one is ranked for the "
        "last one they watched, after what they watched before it (new items dropped), every "
        "item with features a candidate, history masked: "
        f"{p['targets']['test']:,} test and {p['targets']['valid']:,} validation targets "
        f"({p['left_out_empty_history']['test']:,} and {p['left_out_empty_history']['valid']:,}"
        " users left out whose history held only new items). Warm: the leave-one-out test of "
        "the same runs (on the log without the new items).",
        "",
        "| model | new uploads HR@10 | new NDCG@10 | validation new HR@10 | warm HR@10 | warm "
        "NDCG@10 | seeds |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in nu["rows"]:
        runs = row["runs"]

        def mean(get, runs=runs):
            values = [get(r) for r in runs]
            text = f"{statistics.fmean(values):.4f}"
            return text + (f" ± {statistics.stdev(values):.4f}" if len(values) > 1 else "")

        out.append(
            f"| {row['name']} | "
            + " | ".join(
                [
                    mean(lambda r: r["new_uploads"]["test"]["HR@10"]),
                    mean(lambda r: r["new_uploads"]["test"]["NDCG@10"]),
                    mean(lambda r: r["new_uploads"]["valid"]["HR@10"]),
                    mean(lambda r: r["warm"]["test"]["model"]["HR@10"]),
                    mean(lambda r: r["warm"]["test"]["model"]["NDCG@10"]),
                ]
            )
            + f" | {', '.join(str(r['seed']) for r in runs)} |"
        )
    by_key = {row["key"]: row["runs"] for row in nu["rows"]}
    if {"moe", "moe+ids"} <= by_key.keys():

        def new_mean(key: str, metric: str) -> float:
            return statistics.fmean(r["new_uploads"]["test"][metric] for r in by_key[key])

        ratios = {
            m: new_mean("moe+ids", m) / max(new_mean("moe", m), 1e-12) for m in ("HR@10", "NDCG@10")
        }
        met = min(ratios.values()) >= 1
        out += [
            "",
            f"New uploads, MoE + IDs over content only: HR@10 {ratios['HR@10']:.3f}x, NDCG@10 "
            f"{ratios['NDCG@10']:.3f}x (goal: at least 1x: {'met' if met else 'not met'}).",
        ]
    return out + [""]


def _layer_table(layer_rows: list[dict], rows: dict, gates_png: str) -> list[str]:
    gate = rows.get("moe", {}).get("gate")
    weights = dict(zip(gate["layers"], gate["mean"], strict=True)) if gate else {}
    out = [
        "### One depth at a time, and where the MoE gate puts its weight",
        "",
        "| depth | test HR@10 | test NDCG@10 | valid NDCG@10 | cold HR@10 | MoE gate weight |",
        "|---|---|---|---|---|---|",
    ]
    for r in layer_rows:
        k = int(r["key"].split(":")[1])
        m = r["mean"]
        cold = m.get("test_cold_start", {}).get("HR@10")
        cells = [
            f"{m['test']['HR@10']:.4f}",
            f"{m['test']['NDCG@10']:.4f}",
            f"{m['valid']['NDCG@10']:.4f}",
            "-" if cold is None else f"{cold:.4f}",
            f"{weights[k]:.3f}" if k in weights else "-",
        ]
        out.append(f"| {k} | " + " | ".join(cells) + " |")
    out += [
        "",
        "Gate weight: the content-only MoE's mean per-user gate over test users (mean over "
        "seeds). Depth 0 is the embedding output, depth k the output of block k. In the plot, "
        "bars are means over seeds and whiskers ± half their range.",
        "",
        f"![Per-depth gate weights]({gates_png})",
        "",
    ]
    return out


def _ablation_table(ablations: list[dict], rows: dict) -> list[str]:
    out = [
        "### Ablations: one setting changed at a time",
        "",
        "Each row changes one setting of a main row and is trained the same way (first seed); "
        "the reference is that main row's first seed. `make benchmark-ablations` adds them.",
        "",
        "| change | valid HR@10 | valid NDCG@10 | test HR@10 | test NDCG@10 | cold HR@10 | "
        "test NDCG@10 vs reference | best / stopped epoch |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for a in ablations:
        ref = rows[a["reference"]]["runs"][0]["views"]["test"]["model"]["NDCG@10"]
        v, t = a["views"]["valid"]["model"], a["views"]["test"]["model"]
        cold = a["views"].get("test_cold_start", {}).get("model", {}).get("HR@10")
        name = rows[a["reference"]]["name"]
        out.append(
            f"| {a['name']} (vs {name}) | {v['HR@10']:.4f} | {v['NDCG@10']:.4f} | "
            f"{t['HR@10']:.4f} | {t['NDCG@10']:.4f} | "
            + ("-" if cold is None else f"{cold:.4f}")
            + f" | {t['NDCG@10'] / ref:.3f}x | {a['best_epoch'] + 1}/{a['epochs']} |"
        )
    out.append("")
    return out


def _content_peer_table(peers: list[dict], rows: dict) -> list[str]:
    """UniSRec and FDSA beside the LinkedOut rows they compare with, and the ratios a reviewer
    reads first, each said plainly."""
    cols = ("HR@10", "NDCG@10", "HR@20", "NDCG@20")
    vectors = peers[0]["item_vectors"]
    out = [
        "### Beside the content-aware peers (UniSRec, FDSA)",
        "",
        "The published UniSRec code (Hou et al., KDD 2022; its FDSA baseline too), unmodified, "
        "trained from scratch by `make benchmark-peers` (`benchmarks/peers/unisrec.py`) in its "
        "own environment on the same split files (RecBole's split checked row by row against "
        "ours), fed one MiniLM vector per item from the same feature dataset: depth "
        f"{vectors['layer']}, slot {vectors['slot']} (the mean of the title's tokens, the "
        "pooling MiniLM's sentence embedding uses). Their settings are the authors', except "
        "the Transformer's width: 64 (inner 128) as ours and the SASRec peer's, since their 300 "
        "costs about 40 minutes an epoch on 2 cores; each JSON's `changed` lists every value "
        "set. Test, history masked; ours are means over seeds.",
        "",
        "| model | " + " | ".join(cols) + " | cold items HR@10 | cold NDCG@10 | epochs (best) "
        "| stopped by | train s/epoch |",
        "|---|" + "---|" * (len(cols) + 5),
    ]
    for peer in peers:
        t, cold = peer["test"]["history_masked"], peer["test"]["cold_start"]
        stop = peer["stopped_by"].replace("_", " ")
        if not peer["converged"]:
            stop += f" after {peer['train_seconds'] / 60:.0f} min: **not converged**"
        out.append(
            f"| {peer['peer']} | "
            + " | ".join(f"{t[c]:.4f}" for c in cols)
            + f" | {cold['HR@10']:.4f} | {cold['NDCG@10']:.4f} | {peer['epochs_trained']} "
            f"({peer['best_epoch']}) | {stop} | {peer['seconds_per_epoch']:.0f} |"
        )
    for key in ("moe+ids", "moe"):
        if key in rows:
            r = rows[key]["mean"]
            t, cold = r["test"], r.get("test_cold_start", {})
            s = statistics.fmean(x["train_seconds_per_epoch"] for x in rows[key]["runs"])
            out.append(
                f"| {rows[key]['name']} | "
                + " | ".join(f"{t[c]:.4f}" for c in cols)
                + "".join(f" | {cold[m]:.4f}" if cold else " | -" for m in ("HR@10", "NDCG@10"))
                + f" | - | early stopping | {s:.0f} |"
            )
    unmasked = [
        f"{p['peer']} {p['test']['history_unmasked']['HR@10']:.4f} / "
        f"{p['test']['history_unmasked']['NDCG@10']:.4f}"
        for p in peers
    ] + [
        f"{rows[k]['name']} {rows[k]['mean']['test_unmasked']['HR@10']:.4f} / "
        f"{rows[k]['mean']['test_unmasked']['NDCG@10']:.4f}"
        for k in ("moe+ids", "moe")
        if "test_unmasked" in rows.get(k, {}).get("mean", {})
    ]
    out += [
        "",
        "Without masking the user's earlier items (RecBole's rule), HR@10 / NDCG@10: "
        + "; ".join(unmasked)
        + ".",
        "",
        "What these rows show:",
        "",
    ]
    for peer in peers:
        ours_key = OURS_BESIDE[peer["row"]]
        if ours_key not in rows:
            continue
        ours = rows[ours_key]["mean"]
        parts = []
        for name, mine, theirs in (
            ("HR@10", ours["test"]["HR@10"], peer["test"]["history_masked"]["HR@10"]),
            ("NDCG@10", ours["test"]["NDCG@10"], peer["test"]["history_masked"]["NDCG@10"]),
            (
                "cold-items HR@10",
                ours.get("test_cold_start", {}).get("HR@10"),
                peer["test"]["cold_start"]["HR@10"],
            ),
        ):
            if mine is None:
                continue
            ratio = f"{mine / theirs:.3f}x" if theirs > 0 else "above a zero"
            parts.append(f"{name} {ratio} ({'we win' if mine > theirs else 'we do not win'})")
        caveat = (
            ""
            if peer["converged"]
            else " (the peer is not converged: trained to its early stop it would score higher, "
            "so these ratios overstate our lead)"
        )
        name = f"{rows[ours_key]['name']} over {peer['peer']}"
        out.append(f"- **{name}**: " + "; ".join(parts) + caveat + ".")
    out.append("")
    return out


def _peer_table(peer: dict, rows: dict, pop: dict, our_epochs: int) -> list[str]:
    since_best = peer["epochs_trained"] - peer["best_epoch"]
    cols = ("HR@10", "NDCG@10", "HR@20", "NDCG@20")
    out = [
        "### Beside RecBole's SASRec (the field's reference implementation)",
        "",
        f"RecBole {peer['versions']['recbole']} SASRec, trained by `make benchmark-peers` in its "
        "own environment on the same split files (RecBole's split checked row by row against "
        f"ours: {'verified' if peer['split_verified'] else 'NOT verified'}). Same width, depth, "
        f"heads, dropout and history length as ours; {peer['epochs_trained']} epochs "
        f"(stopped by {peer['stopped_by'].replace('_', ' ')}, best epoch {peer['best_epoch']}"
        + (
            f"; **not converged**: its best epoch came {since_best} epoch(s) before the budget "
            "ran out, so this row is below RecBole's converged quality"
            if peer["stopped_by"] == "time_budget" and since_best < peer["config"]["stopping_step"]
            else ""
        )
        + "). "
        f"{peer['train_seconds'] / 60:.0f} min of training on {peer['config']['threads']} "
        f"thread(s), early stopping after {peer['config']['stopping_step']} epochs without a "
        "better validation NDCG@10. Ours: mean over seeds, each to its own early stop (at most "
        f"{our_epochs} epochs). RecBole ranks without masking the user's earlier items; both "
        "rules are shown.",
        "",
        "| model | rule | " + " | ".join(cols) + " | train s/epoch |",
        "|---|---|" + "---|" * (len(cols) + 1),
    ]
    for rule, view, peer_view in (
        ("masked", "test", "history_masked"),
        ("unmasked", "test_unmasked", "history_unmasked"),
    ):
        p = peer["test"][peer_view]
        out.append(
            f"| RecBole SASRec (ID) | {rule} | "
            + " | ".join(f"{p[c]:.4f}" for c in cols)
            + f" | {peer['seconds_per_epoch']:.1f} |"
        )
        for key in MAIN:
            if key in rows:
                r = rows[key]
                s = statistics.fmean(x["train_seconds_per_epoch"] for x in r["runs"])
                out.append(
                    f"| {r['name']} | {rule} | "
                    + " | ".join(f"{r['mean'][view][c]:.4f}" for c in cols)
                    + f" | {s:.1f} |"
                )
        pv = pop[view]
        out.append(
            f"| popularity | {rule} | " + " | ".join(f"{pv[c]:.4f}" for c in cols) + " | - |"
        )
    out.append("")
    return out


def _speed(figures: dict, ml: dict) -> list[str]:
    threads = ml["environment"]["torch_threads"]
    out = [
        "## Speed on this machine",
        "",
        f"Training figures: the benchmark's runs, on {threads} torch thread(s) each.",
        "",
    ]
    ex = ml["extraction"]
    timed = (
        f"{ex['titles_per_s']:.0f} titles/s ({ex['titles']:,} titles in {ex['seconds']:.0f} s)"
        if "seconds" in ex
        else "not timed: the titles were extracted before this benchmark ran"
    )
    out += [
        "| stage | figure |",
        "|---|---|",
        f"| text extraction (MiniLM, all depths, into Lance) | {timed} |",
    ]
    if "extract" in figures:
        e = figures["extract"]
        out.append(
            f"| video extraction, pipeline overhead ({e['videos']} clips, tiny Qwen2.5-VL) | "
            f"{e['extract_videos_per_s']:.2f} videos/s vs {e['decode_only_videos_per_s']:.2f} "
            f"decode-only: **{e['extract_over_decode_only']:.2f}x** |"
        )
        if "queries" in e:
            q = e["queries"]
            out.append(
                f"| video extraction, 3 queries per video ({q['videos']} clips, random 8-block "
                f"Qwen2.5-VL) | after the video: **{q['three_after_over_one']:.2f}x** one "
                f"query's time (3 separate runs {q['three_separate_over_one']:.2f}x, queries "
                f"before the video {q['three_before_over_one']:.2f}x) |"
            )
        if "qwen25_vl_3b_shape" in e:
            b = e["qwen25_vl_3b_shape"]
            out.append(
                f"| video extraction, Qwen2.5-VL-3B shape ({b['params'] / 1e9:.2f} B params, "
                f"{b['dtype']}, random weights) | {b['seconds_per_video']:.1f} s per video |"
            )
    sp = ml["speed"]
    for key, name in (
        ("moe", "LinkedOut MoE"),
        ("moe+ids", "LinkedOut MoE + IDs"),
        ("ids", "ID-only SASRec"),
    ):
        if key not in sp["train"]:
            continue
        t = sp["train"][key]
        line = (
            f"| training, {name} | {t['sequences_per_s']:.0f} sequences/s, "
            f"{t['seconds_per_epoch']:.1f} s per epoch (+ {t['validation_seconds_per_epoch']:.1f}"
            " s validation)"
        )
        if "softmax_floor" in t:
            f = t["softmax_floor"]
            line += (
                f"; floor {f['seconds']:.1f} s per epoch: the softmax's three products alone "
                f"({f['tflop']:.2f} TFLOP in {f['dtype']}, {f['width']} wide x {f['items']:,} "
                f"items); {t['epochs']} epochs, **{t['wall_seconds'] / 60:.1f} min** to the "
                "early stop, setup and final evaluation included"
            )
        out.append(line + " |")
    if "peer_recbole_sasrec" in figures and "ids" in sp["train"]:
        p = figures["peer_recbole_sasrec"]
        ours = sp["train"]["ids"]["seconds_per_epoch"] / p["seconds_per_epoch"]
        out.append(
            f"| training, RecBole SASRec (same split, {p['config']['threads']} thread(s)) | "
            f"{p['seconds_per_epoch']:.1f} s per epoch "
            f"(+ {p['valid_seconds_per_epoch']:.1f} s validation): our ID-only SASRec takes "
            f"**{ours:.2f}x** its time per epoch |"
        )
    for key, name in (("moe", "LinkedOut MoE"), ("moe+ids", "MoE + IDs"), ("ids", "ID-only")):
        if f"evaluate_{key}" not in sp:
            continue
        e, r = sp[f"evaluate_{key}"], sp[f"recommend_{key}"]
        out.append(
            f"| evaluation, {name}: one full-ranking pass | {e['seconds']:.1f} s for "
            f"{e['users']:,} users x {e['items']:,} items |"
        )
        out.append(
            f"| serving, {name}: `recommend` top 10 over the catalog | p50 {r['p50_ms']:.2f} ms,"
            f" p99 {r['p99_ms']:.2f} ms ({r['requests']:,} requests) |"
        )
    out.append("")
    if "storage" in figures:
        s = figures["storage"]
        secs = s["seconds"]
        out += [
            f"Feature store: {s['rows']:,} rows of {s['shape']} {s['dtype']}; time relative to a "
            "NumPy memmap (lower is faster).",
            "",
            "| format | write | take 1,000 random | load all | one layer | on disk |",
            "|---|---|---|---|---|---|",
        ]
        for fmt, row in secs.items():
            cells = " | ".join(
                f"{row[op]:.3f} s ({row[op] / secs['memmap'][op]:.1f}x)"
                for op in ("write", "take", "load", "one layer")
            )
            out.append(f"| {fmt} | {cells} | {s['bytes_on_disk'][fmt] / 2**20:.0f} MiB |")
        out.append("")
    return out


# -- plots ----------------------------------------------------------------------------------


def plot_all(ml: dict, folder: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = {r["key"]: r for r in ml["rows"]}
    # Gate weights per depth.
    fig, ax = plt.subplots(figsize=(7, 3.6))
    keys = [k for k in ("moe", "moe+ids") if rows.get(k, {}).get("gate")]
    width = 0.8 / max(len(keys), 1)
    for i, key in enumerate(keys):
        per_seed = [r["gate"]["mean"] for r in rows[key]["runs"]]
        layers = rows[key]["gate"]["layers"]
        mean = [sum(c) / len(c) for c in zip(*per_seed)]
        spread = [max(c) - min(c) for c in zip(*per_seed)]
        ax.bar(
            [x + i * width for x in range(len(layers))],
            mean,
            width,
            yerr=[s / 2 for s in spread],
            label=rows[key]["name"],
        )
        ax.set_xticks([x + width * (len(keys) - 1) / 2 for x in range(len(layers))], layers)
    ax.set(xlabel="depth (0 = embeddings)", ylabel="mean gate weight", title="Where the gate looks")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(folder / "gates.png", dpi=110)
    plt.close(fig)

    # HR@10 by fusion mode, overall and on cold items.
    order = [k for k in ("ids", "moe", "moe+ids", "mean", "last") if k in rows]
    order += [r["key"] for r in ml["rows"] if r["key"].startswith("layer:")]
    names = ["popularity"] + [rows[k]["name"].replace(" (content only)", "") for k in order]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=False)
    for ax, view, title in (
        (axes[0], "test", "all test users"),
        (axes[1], "test_cold_start", "cold items"),
    ):
        values = [ml["popularity"][view]["HR@10"]]
        errors = [0.0]
        for k in order:
            m = rows[k]["mean"].get(view, {}).get("HR@10", 0.0)
            s = rows[k]["std"].get(view, {}).get("HR@10")
            values.append(m)
            errors.append(s or 0.0)
        colors = ["#999999"] + ["#3b6ea8" if k in MAIN else "#7fa7d1" for k in order]
        ax.bar(range(len(values)), values, yerr=errors, color=colors)
        ax.set_xticks(range(len(values)), names, rotation=60, ha="right", fontsize=8)
        ax.set(title=f"HR@10, {title}", ylabel="HR@10")
    fig.tight_layout()
    fig.savefig(folder / "fusion_hr10.png", dpi=110)
    plt.close(fig)

    # Training curves of the first seed of the main rows.
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for key in [k for k in MAIN if k in rows]:
        curve = rows[key]["runs"][0]["curve"]
        epochs = [e["epoch"] + 1 for e in curve]
        left.plot(epochs, [e["val_NDCG@10"] for e in curve], marker="o", label=rows[key]["name"])
        right.plot(epochs, [e["train_loss"] for e in curve], marker="o", label=rows[key]["name"])
    from matplotlib.ticker import MaxNLocator

    for ax in (left, right):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    left.set(title="validation NDCG@10", xlabel="epoch")
    right.set(title="training loss", xlabel="epoch")
    left.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(folder / "training_curves.png", dpi=110)
    plt.close(fig)


def _users_taken(taken) -> str:
    return "every user" if taken == "all" else f"the first {taken:,} users of the file"


def _seeds(seeds: list[int]) -> str:
    return ", ".join(str(s) for s in seeds)


def _span(layers: list[int]) -> str:
    return (
        f"{layers[0]}-{layers[-1]}"
        if layers == list(range(layers[0], layers[-1] + 1))
        else str(layers)
    )


def _rel(path: Path, base: Path) -> str:
    try:
        return str(path.resolve().relative_to(base.resolve()))
    except ValueError:
        return str(path)


if __name__ == "__main__":
    main()
