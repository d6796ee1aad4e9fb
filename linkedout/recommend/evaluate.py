"""A trained run, loaded once: full-ranking evaluation, baselines and the gate plot."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from linkedout.errors import LinkedOutError
from linkedout.recommend.data import left_pad
from linkedout.recommend.metrics import (
    RankingMetrics,
    fixed_score_ranks,
    history_mask,
    target_ranks,
)
from linkedout.recommend.module import Catalog, LinkedOutModule
from linkedout.recommend.split_files import read_split


class TrainedRun:
    """Checkpoint + cached per-layer item embeddings + split of one `linkedout train` run."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        best = self.path / "checkpoints" / "best.ckpt"
        if not best.exists() or not (self.path / "serving.pt").exists():
            raise LinkedOutError(
                f"{self.path} holds no trained run (no checkpoints/best.ckpt and serving.pt): "
                "train one with `linkedout train`"
            )
        self.config = json.loads((self.path / "config.json").read_text())
        self.module = LinkedOutModule.load_from_checkpoint(best, map_location="cpu").eval()
        serving = torch.load(self.path / "serving.pt", map_location="cpu")
        self.catalog = Catalog(serving["experts"], serving["ids"])
        self.item_ids: list[str] = serving["item_ids"]
        self.index = {item: i + 1 for i, item in enumerate(self.item_ids)}
        self.layers: list[int] = self.config["layers"]
        self.split = read_split(self.path / "split")
        self.user_index = {u: i for i, u in enumerate(self.split.users)}
        self.max_len = self.module.config.max_len

    @torch.inference_mode()
    def scores(self, histories: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Every item's score `[B, N]`, the user states `[B, d]` and gates `[B, L]`."""
        # Padded to the longest history here, not to max_len: pads are hidden from real steps,
        # so states are the same, and evaluation groups users by length to make this short.
        length = max(1, min(self.max_len, max(len(h) for h in histories)))
        padded = torch.tensor([left_pad(h, length) for h in histories])
        h, gate = self.module.encode(padded, self.catalog)
        scores = self.module.model.score(h, gate, self.catalog.experts, self.catalog.ids)
        scores[:, 0] = float("-inf")
        return scores, h, gate


@torch.inference_mode()
def evaluate_run(
    path: str | Path,
    splits: tuple[str, ...] = ("valid", "test"),
    write: bool = False,
    batch_size: int = 1024,
) -> dict:
    """Metrics of the model and of popularity on each split, plus two views of test: the
    cold-start slice (targets never seen in training) and `test_unmasked`, ranked without
    masking the user's earlier items (RecBole's rule, for side-by-side comparisons)."""
    run = TrainedRun(path)
    split = run.split
    popularity = split.train_counts()
    popularity[0] = float("-inf")
    seen = torch.zeros(split.num_items, dtype=torch.bool)
    seen[[i for seq in split.train for i in seq]] = True
    results: dict = {}
    gates = None  # [users, L], filled in user order
    for name in splits:
        views = ("", "_cold_start", "_unmasked") if name == "test" else ("",)
        acc = {view: (RankingMetrics(), RankingMetrics()) for view in views}
        histories = [split.history(u, name) for u in range(len(split.users))]
        # Users of similar history length batched together: a batch's sequences are as short
        # as its longest history. Metrics are sums, so the order does not change them.
        order = sorted(range(len(histories)), key=lambda u: len(histories[u]))
        for start in range(0, len(order), batch_size):
            users = order[start : start + batch_size]
            batch = [histories[u] for u in users]
            targets = torch.tensor([split.target(u, name) for u in users])
            scores, _, gate = run.scores(batch)
            exclude = history_mask(batch, split.num_items, "cpu")
            ranks, ranks_unmasked = target_ranks(scores, targets, exclude)
            pop_ranks, pop_unmasked = fixed_score_ranks(popularity, targets, batch)
            _update(acc[""], ranks, pop_ranks)
            if name == "test":
                cold = ~seen[targets]
                _update(acc["_cold_start"], ranks[cold], pop_ranks[cold])
                _update(acc["_unmasked"], ranks_unmasked, pop_unmasked)
                if run.module.model.content:
                    if gates is None:
                        gates = gate.new_empty((len(histories), gate.shape[1]))
                    gates[users] = gate
        for view, (model, pop) in acc.items():
            if model.count:
                results[name + view] = {"model": model.compute(), "popularity": pop.compute()}
    if gates is not None:
        results["gate"] = {"layers": run.layers, "mean": gates.mean(0).tolist()}
    if write:
        (run.path / "metrics.json").write_text(json.dumps(results, indent=2) + "\n")
        if gates is not None and len(run.layers) > 1:
            plot_gates(run.layers, gates, run.path / "gates.png")
    return results


def _update(acc: tuple[RankingMetrics, RankingMetrics], model: torch.Tensor, pop: torch.Tensor):
    if len(model):
        acc[0].update(model)
        acc[1].update(pop)


def write_serving(run: Path, checkpoint: Path, item_tokens, item_ids: list[str]) -> None:
    """Cache the best model's per-layer item embeddings: serving then costs one sequence
    forward and L matrix-vector products, never the compressor over the catalog."""
    module = LinkedOutModule.load_from_checkpoint(checkpoint, map_location="cpu").eval()
    module.attach(item_tokens)
    with torch.inference_mode():
        catalog = module.catalog()
    torch.save(
        {
            "item_ids": item_ids,
            "experts": catalog.experts,
            "ids": None if catalog.ids is None else catalog.ids.detach().clone(),
        },
        run / "serving.pt",
    )


def plot_gates(layers: list[int], gates: torch.Tensor, path: Path, sample: int = 24) -> None:
    """Mean gate weight per depth over all users, and the gates of a sample of users."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), width_ratios=[1, 1.4])
    labels = [str(x) for x in layers]
    left.bar(labels, gates.mean(0).numpy(), color="#3b6ea8")
    left.set(title="Mean gate weight per depth (test users)", xlabel="layer", ylabel="weight")
    picks = torch.linspace(0, len(gates) - 1, min(sample, len(gates))).long()
    image = right.imshow(gates[picks].numpy(), aspect="auto", cmap="viridis", vmin=0)
    right.set(title=f"Gate weights of {len(picks)} users", xlabel="layer", ylabel="user")
    right.set_xticks(range(len(labels)), labels)
    fig.colorbar(image, ax=right, label="weight")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
