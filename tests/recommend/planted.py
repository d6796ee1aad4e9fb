"""Planted-signal data: one stored depth carries the users' preferences, the others noise."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import torch

from linkedout.storage import FeatureRow, FeatureStore, FeatureWriter, Manifest


@dataclass(frozen=True)
class Planted:
    features: Path
    interactions: Path
    signal_layer: int
    """The model depth (manifest index) that holds the cluster signal."""
    cold_items: set[str]
    """Items that appear only as test targets: never seen in training."""
    manifest: Manifest
    centroids: torch.Tensor
    """`[clusters, dim]`: the signal depth of a cluster's items sits around its centroid."""
    clusters: int

    def cluster_of_user(self, user: str) -> int:
        return int(user.removeprefix("u")) % self.clusters


def write_new_items(path: Path, planted: Planted, cluster: int, n: int, prefix: str = "new"):
    """A feature dataset of `n` items no run was trained on, all of `cluster` (same manifest
    as the planted features, so a run trained on those can add them)."""
    g = torch.Generator().manual_seed(1000 + cluster)
    m = planted.manifest
    x = torch.randn(n, len(m.layers), m.tokens_per_layer, m.hidden_size, generator=g)
    k = m.layers.index(planted.signal_layer)
    x[:, k] = planted.centroids[cluster] + 0.5 * torch.randn(
        n, m.tokens_per_layer, m.hidden_size, generator=g
    )
    ids = [f"{prefix}{cluster}-{i:03d}" for i in range(n)]
    store = FeatureStore.create(path, m)
    with FeatureWriter(store, commit_every=1000) as w:
        for i, item in enumerate(ids):
            w.add(FeatureRow(item, x[i].half(), content_sha256=item))
    return ids


def make_planted(
    root: Path,
    *,
    items: int = 240,
    users: int = 300,
    clusters: int = 8,
    layers: tuple[int, ...] = (2, 4, 6, 8),
    signal_layer: int = 4,
    tokens: int = 4,
    dim: int = 16,
    seq_len: int = 10,
    seed: int = 0,
    queries: tuple[str, ...] = (),
) -> Planted:
    """With `queries`, a multi-query dataset whose queries follow the video (half the slots
    shared, half each query's own): only the last query's own slots at `signal_layer` carry
    the signal; the shared video slots and every other query are noise."""
    g = torch.Generator().manual_seed(seed)
    cluster_of = torch.arange(items) % clusters
    centroids = torch.randn(clusters, dim, generator=g) * 3
    x = torch.randn(items, len(layers), tokens, dim, generator=g)
    k = layers.index(signal_layer)
    own = tokens // 2 if queries else tokens  # the slots a query has to itself
    asked = {q: torch.randn(items, len(layers), own, dim, generator=g) for q in queries[1:]}
    signal = centroids[cluster_of][:, None, :] + 0.5 * torch.randn(items, own, dim, generator=g)
    if queries:
        asked[queries[-1]][:, k] = signal
    else:
        x[:, k] = signal
    ids = [f"v{i:04d}" for i in range(items)]
    manifest = Manifest(
        backbone="planted",
        backbone_kind="video-llm",
        layers=layers,
        tokens_per_layer=tokens,
        hidden_size=dim,
        prompt=f"{queries[0]}?" if queries else None,
        queries=tuple((q, f"{q}?") for q in queries),
        query_slots=own if queries else None,
    )
    store = FeatureStore.create(root / "features.lance", manifest)
    with FeatureWriter(store, commit_every=1000) as w:
        for i, item in enumerate(ids):
            extra = {q: t[i].half() for q, t in asked.items()}
            w.add(FeatureRow(item, x[i].half(), content_sha256=item, queries=extra))
    # A fixed eighth of each cluster is "cold": such items are only ever a test target.
    cold = {i for i in range(items) if (i // clusters) % 8 == 7}
    warm_by_cluster = [
        [i for i in range(items) if cluster_of[i] == c and i not in cold] for c in range(clusters)
    ]
    cold_by_cluster = [
        [i for i in range(items) if cluster_of[i] == c and i in cold] for c in range(clusters)
    ]
    rows = []
    cold_used = set()
    for u in range(users):
        c = u % clusters
        pool = warm_by_cluster[c]
        picks = torch.randperm(len(pool), generator=g)[: seq_len - 1].tolist()
        seq = [pool[p] for p in picks]
        if u % 2 == 0:  # half the users end on a cold item of their cluster
            options = cold_by_cluster[c]
            last = options[int(torch.randint(len(options), (1,), generator=g))]
            cold_used.add(last)
        else:
            rest = [i for i in pool if i not in seq]
            last = rest[int(torch.randint(len(rest), (1,), generator=g))]
        for t, item in enumerate([*seq, last]):
            rows.append((f"u{u}", ids[item], t))
    interactions = root / "interactions.csv"
    with open(interactions, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["user_id", "item_id", "timestamp"])
        writer.writerows(rows)
    cold_items = {ids[i] for i in cold_used}
    features = root / "features.lance"
    return Planted(features, interactions, signal_layer, cold_items, manifest, centroids, clusters)


def train_planted(planted: Planted, out: Path, fusion: str = "moe", ids: bool = False, **kw):
    """A run on planted data with the tests' small settings (15 epochs at most)."""
    from linkedout.recommend.config import TrainConfig
    from linkedout.recommend.model import ModelConfig
    from linkedout.recommend.train import train

    settings = {"epochs": 15, "batch_size": 64, "lr": 3e-3, "patience": 5, "quiet": True} | kw
    config = TrainConfig(
        features=str(planted.features),
        interactions=str(planted.interactions),
        out=str(out),
        model=ModelConfig(d_model=32, fusion=fusion, ids=ids, dropout=0.1),
        **settings,
    )
    return train(config)
