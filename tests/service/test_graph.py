"""The graph index (service/graph.py, graph_scan.py, graph_store.py): exact where it holds the
whole catalog, history and `exclude` masked exactly under it, items added or removed since it
was built handled beside it, and a stored index refused when it is not this run's."""

from __future__ import annotations

import json
import time

import pytest
import torch

from linkedout.errors import LinkedOutError
from linkedout.service.catalog_changes import add_items, remove_items
from linkedout.service.graph import GraphIndex, Projection
from linkedout.service.graph_scan import GraphScan
from linkedout.service.graph_settings import GraphSettings
from linkedout.service.graph_store import graph_folder, load_graph
from linkedout.service.indexing import BackgroundBuilds, build_for, stale
from linkedout.service.ranker import Ranker, RankRequest
from linkedout.service.scan import Scan
from tests.cli_harness import assert_one_line_error, run_linkedout, tree_digest
from tests.recommend.planted import write_new_items


def _catalog(n: int = 300, width: int = 12, seed: int = 0):
    """Keys `[n + 1, width]` (row 0 padding) and users living in 4 of the width directions,
    as user vectors of a trained model do (few directions carry them)."""
    g = torch.Generator().manual_seed(seed)
    keys = torch.randn(n + 1, width, generator=g) * torch.rand(n + 1, 1, generator=g) * 2
    keys[0] = 0
    basis = torch.linalg.qr(torch.randn(width, 4, generator=g))[0]
    users = torch.randn(64, 4, generator=g) @ basis.T
    return keys, users


def test_the_projection_keeps_the_products_of_users_in_the_directions_it_was_fitted_on():
    keys, users = _catalog()
    projection = Projection.fit(keys[1:], users[:32], dims=4)
    kept = projection.users(users[32:]) @ projection.keys(keys[1:]).T
    assert torch.allclose(kept, users[32:] @ keys[1:].T, atol=1e-3)
    # Plain PCA of the keys would keep other directions: the users' are what matter.
    assert projection.keys_map.shape == (12, 4)


def _graph_scan(keys, users, settings, lifted=None, items=None):
    rows = torch.arange(1, len(keys))
    index = GraphIndex.build(keys[rows], users, settings)
    names = items or [f"i{r}" for r in rows.tolist()]
    rows_of = {f"i{r}": r for r in range(1, len(keys))}
    return GraphScan.of(index, names, 1, rows_of, keys, lifted)


def test_a_graph_holding_the_whole_catalog_answers_as_the_exact_scan():
    keys, users = _catalog()
    lifted = (torch.rand(len(keys), generator=torch.Generator().manual_seed(3)) < 0.1).float()
    graph = _graph_scan(keys, users, GraphSettings(candidates=400, breadth=400), lifted)
    scan = Scan.of(keys, low=False)
    masked = [[0, *range(1 + b, 40 + b, 3)] for b in range(len(users))]
    offsets = torch.rand(len(users)) * 3
    exact = scan.top(users, 10, masked, offsets, lifted)
    found = graph.top(scan, users, 10, masked, offsets, lifted)
    assert torch.equal(found[1], exact[1])
    assert torch.allclose(found[0], exact[0])
    assert len(graph.side) == int(lifted[1:].sum())  # lifted items: scanned exactly beside


def test_lifted_items_are_in_a_graph_built_with_the_lift_coordinate():
    """The lift as one more product term: keys end in 1 on lifted items, users in their lift,
    so lifted items are linked in like any other and nothing is left beside the graph."""
    keys, users = _catalog()
    lifted = (torch.rand(len(keys), generator=torch.Generator().manual_seed(4)) < 0.2).float()
    offsets = torch.rand(len(users), generator=torch.Generator().manual_seed(5)) * 3
    index = GraphIndex.build(
        torch.cat([keys[1:], lifted[1:, None]], 1),
        torch.cat([users, offsets[:, None]], 1),
        GraphSettings(candidates=30, breadth=300),
        lifted=True,
    )
    rows_of = {f"i{r}": r for r in range(1, len(keys))}
    graph = GraphScan.of(index, list(rows_of), 1, rows_of, keys, lifted)
    assert len(graph.side) == 0 and graph.covered == len(keys) - 1
    scan = Scan.of(keys, low=False)
    masked = [[0]] * len(users)
    exact = scan.top(users, 10, masked, offsets, lifted)[1]
    found = graph.top(scan, users, 10, masked, offsets, lifted)[1]
    overlap = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(found, exact))
    assert overlap / exact.numel() > 0.95
    assert lifted[found].sum() > 0  # lifted items come from the graph itself
    # Ranked without the lift (--new-item-lift 0), the same graph still answers: the users'
    # last coordinate is 0.
    plain = graph.top(scan, users, 10, masked)[1]
    exact_plain = scan.top(users, 10, masked)[1]
    overlap = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(plain, exact_plain))
    assert overlap / exact.numel() > 0.9


def test_history_and_exclusions_never_come_back_and_every_answer_is_full():
    keys, users = _catalog(n=400)
    graph = _graph_scan(keys, users, GraphSettings(candidates=15, breadth=50))
    scan = Scan.of(keys, low=False)
    exact = scan.top(users, 10, [[0]] * len(users))[1]
    # Mask each user's whole candidate list but a few, and their exact top 3: what is left of
    # the graph's offer is too little, so those users are ranked exactly.
    offered = graph.label_rows[graph.graph.candidates(users)]
    masked = [[0, *offered[b, :12].tolist(), *exact[b, :3].tolist()] for b in range(len(users))]
    scores, rows = graph.top(scan, users, 10, masked)
    assert torch.isfinite(scores).all()
    for b in range(len(users)):
        assert not set(rows[b].tolist()) & set(masked[b])
    redo = scan.top(users, 10, masked)[1]
    assert (rows == redo).all(1).float().mean() > 0.5  # fallen back to the exact answer


def test_items_added_since_the_build_are_found_and_removed_ones_never_shown():
    keys, users = _catalog(n=300)
    index = GraphIndex.build(keys[1:201], users, GraphSettings(candidates=30, breadth=60))
    # A later catalog: items i1..i200 were built in, i5 and i17 removed since, rows renumbered;
    # i201..i300 added since (not in the graph).
    live = [r for r in range(1, 301) if r not in (5, 17)]
    rows_of = {f"i{r}": j + 1 for j, r in enumerate(live)}
    later = torch.cat([keys[:1], keys[live]])
    graph = GraphScan.of(index, [f"i{r}" for r in range(1, 201)], 1, rows_of, later, None)
    assert len(graph.side) == 100 and graph.covered == 198
    scan = Scan.of(later, low=False)
    scores, rows = graph.top(scan, users, 10, [[0]] * len(users))
    exact = scan.top(users, 10, [[0]] * len(users))[1]
    assert rows.max() < len(later)
    assert (rows > 198).any()  # the added items compete
    # Removed items never come back: no row maps to them (both are absent from the later
    # catalog, and the labels that held them point at padding, which is never returned).
    assert (rows != 0).all()
    overlap = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(rows, exact))
    assert overlap / rows.numel() > 0.9


def test_a_run_ranks_through_its_stored_graph_as_it_does_exactly(run_copy):
    """The planted catalog (240 items) is smaller than the default candidates: the graph holds
    it all, so rankings through it equal the exact ones, item for item."""
    proc = run_linkedout(["catalog", "index", run_copy, "--threads", "1"])
    assert proc.returncode == 0, proc.stderr
    assert "graph index over catalog version 1" in proc.stdout
    exact = Ranker(run_copy, index="exact")
    graph = Ranker(run_copy, index="graph")
    assert graph.snapshot.graph is not None and exact.snapshot.graph is None
    assert Ranker(run_copy, index="auto").snapshot.graph is None  # 240 items: below auto's size
    users = exact.split.users[:8]
    requests = [RankRequest(user=u, k=20, exclude=["v0003", "v0007"]) for u in users]
    for through, scanned in zip(graph.rank(requests), exact.rank(requests), strict=True):
        assert [r.item_id for r in through.items] == [r.item_id for r in scanned.items]
        assert [r.score for r in through.items] == pytest.approx([r.score for r in scanned.items])
    cli = run_linkedout(["recommend", run_copy, "--user", "u0", "--index", "graph", "--json"])
    assert cli.returncode == 0, cli.stderr
    assert [r["item_id"] for r in json.loads(cli.stdout)["items"]] == [
        r.item_id for r in exact.rank([RankRequest(user="u0", k=10)])[0].items
    ]


def test_catalog_changes_after_the_build_are_served_through_the_graph(run_copy, planted, tmp_path):
    ranker = Ranker(run_copy)
    build_for(ranker, ranker.snapshot, GraphSettings(candidates=40, breadth=80))
    new = write_new_items(tmp_path / "new.lance", planted, cluster=0, n=12)
    add_items(run_copy, str(tmp_path / "new.lance"))
    remove_items(run_copy, ["v0000", "v0001", "v0002"])
    served = Ranker(run_copy, index="graph")
    snap = served.snapshot
    assert snap.graph.catalog_version == 1 and snap.version == 3
    assert len(snap.graph.side) == 12 and snap.graph.covered == len(snap.graph.label_rows) - 3
    # 12 added since the build (beside the graph until a rebuild) and 3 removed: neither
    # past REBUILD_SHARE of the graph's 240 items.
    assert snap.graph.unbuilt == 12 and snap.graph.removed == 3 and not stale(snap)
    users = [u for u in served.split.users if planted.cluster_of_user(u) == 0][:10]
    results = served.rank([RankRequest(user=u, k=30) for u in users])
    shown = {r.item_id for result in results for r in result.items}
    assert shown & set(new)  # added items reach users through the exact side scan
    assert not shown & {"v0000", "v0001", "v0002"}
    remove_items(run_copy, [f"v{i:04d}" for i in range(3, 20)])
    served.refresh()
    assert served.snapshot.graph.removed == 20 and stale(served.snapshot)


def test_a_stored_graph_of_another_run_or_damaged_is_refused_in_one_line(run_copy):
    assert run_linkedout(["catalog", "index", run_copy, "--threads", "1"]).returncode == 0
    folder = graph_folder(run_copy)
    meta = json.loads((folder / "meta.json").read_text())
    (folder / "meta.json").write_text(json.dumps({**meta, "run_id": "another"}))
    with pytest.raises(LinkedOutError, match="belongs to another run"):
        load_graph(run_copy, meta["run_id"])
    proc = run_linkedout(["recommend", run_copy, "--user", "u0", "--index", "graph"])
    assert_one_line_error(proc, "belongs to another run")
    # auto falls back to the exact scan rather than failing a ranking
    assert Ranker(run_copy, index="auto").snapshot.graph is None
    (folder / "meta.json").write_text(json.dumps(meta))
    (folder / "graph.bin").write_bytes(b"not a graph")
    proc = run_linkedout(["recommend", run_copy, "--user", "u0", "--index", "graph"])
    assert_one_line_error(proc, "is damaged")
    (folder / "meta.json").write_text(json.dumps({**meta, "format": 99}))
    assert_one_line_error(
        run_linkedout(["recommend", run_copy, "--user", "u0", "--index", "graph"]),
        "newer than this linkedout reads",
    )


def test_recommend_through_a_graph_the_run_lacks_says_how_to_build_one(run_copy):
    before = tree_digest(run_copy)
    proc = run_linkedout(["recommend", run_copy, "--user", "u0", "--index", "graph"])
    assert_one_line_error(proc, "has no graph index: build one with `linkedout catalog index")
    bad = run_linkedout(["recommend", run_copy, "--user", "u0", "--index", "fast"])
    assert bad.returncode == 2 and "fast" in bad.stderr
    bad = run_linkedout(["catalog", "index", run_copy, "--candidates", "900", "--breadth", "10"])
    assert_one_line_error(bad, "--breadth")
    bad = run_linkedout(["catalog", "index", run_copy, "--dims", "5000"])
    assert_one_line_error(bad, "--dims 5000", "wide: project to at most")
    assert tree_digest(run_copy) == before


def test_serve_builds_a_missing_graph_in_the_background_and_ranks_through_it(run_copy, serve):
    """`serve --index graph` on a run without one: exact rankings at once, the graph built
    off the request path and swapped in, the same answers through it (the planted catalog is
    smaller than the candidates), and the built graph saved for the next start."""
    server = serve(run_copy, "--index", "graph")
    history = {"history": ["v0002", "v0010"], "k": 10, "exclude": ["v0003"]}
    with server.client() as http:
        before = http.post("/recommend", json=history).json()
        deadline = time.monotonic() + 60
        while http.get("/metadata").json()["index"]["in_use"] != "graph":
            assert time.monotonic() < deadline, server.log.read_text()
            time.sleep(0.2)
        index = http.get("/metadata").json()["index"]
        assert index["graph_catalog_version"] == 1 and index["building"] is False
        assert index["graph_items"] + index["beside_graph"] == 240
        after = http.post("/recommend", json=history).json()
    assert [i["item_id"] for i in after["items"]] == [i["item_id"] for i in before["items"]]
    assert load_graph(run_copy, Ranker(run_copy).config.run_id) is not None


def test_a_server_rebuilds_a_stale_graph_and_takes_one_another_process_saved(
    run_copy, planted, tmp_path
):
    """BackgroundBuilds: items added past REBUILD_SHARE start a build off the request path,
    whose graph is swapped in and saved; a graph saved by another process (`catalog index`,
    another worker) newer than the one in use is taken from disk instead of built again."""
    ranker = Ranker(run_copy, index="graph")
    builds = BackgroundBuilds(ranker, "graph")
    assert builds.check()  # no graph yet: a build starts
    builds._thread.join(60)
    assert ranker.snapshot.graph.catalog_version == 1 and not builds.building
    write_new_items(tmp_path / "new.lance", planted, cluster=0, n=30)
    add_items(run_copy, str(tmp_path / "new.lance"))
    assert ranker.refresh() and stale(ranker.snapshot)  # 30 beside a 240-item graph
    assert builds.check()
    builds._thread.join(60)
    assert ranker.snapshot.graph.catalog_version == 2 and ranker.snapshot.graph.unbuilt == 0
    assert load_graph(run_copy, ranker.config.run_id).catalog_version == 2
    # Another process indexes version 3; this server takes it from disk, building nothing.
    remove_items(run_copy, [f"v{i:04d}" for i in range(20)])
    assert ranker.refresh() and stale(ranker.snapshot)
    assert run_linkedout(["catalog", "index", run_copy, "--threads", "1"]).returncode == 0
    assert not builds.check() and not builds.building
    assert ranker.snapshot.graph.catalog_version == 3 and not stale(ranker.snapshot)
