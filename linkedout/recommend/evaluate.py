"""A trained run, loaded once: full-ranking evaluation, baselines and the gate plot."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from linkedout.errors import LinkedOutError
from linkedout.recommend.catalog import Catalog, open_catalog, write_catalog
from linkedout.recommend.data import left_pad
from linkedout.recommend.metrics import RankingMetrics, fixed_score_ranks
from linkedout.recommend.module import LinkedOutModule
from linkedout.recommend.ranking import rank_targets
from linkedout.recommend.split_files import read_split
from linkedout.storage.features import default_memory_budget


class TrainedRun:
    """Checkpoint + per-layer item embeddings (`catalog.lance`) + split of one training run.

    The embeddings are loaded when they fit `memory_budget` bytes (default: half the free
    memory), else ranked chunk by chunk from disk: same results, one read of the file per
    ranking pass."""

    def __init__(self, path: str | Path, memory_budget: int | None = None):
        self.path = Path(path)
        best = self.path / "checkpoints" / "best.ckpt"
        if not best.exists():
            raise LinkedOutError(
                f"{self.path} holds no trained run (no checkpoints/best.ckpt): "
                "train one with `linkedout train`"
            )
        self.config = json.loads((self.path / "config.json").read_text())
        self.module = LinkedOutModule.load_from_checkpoint(best, map_location="cpu").eval()
        ids = self.module.model.ids.weight.detach() if self.module.model.ids is not None else None
        budget = default_memory_budget() if memory_budget is None else memory_budget
        self.catalog: Catalog = open_catalog(self.path / "catalog.lance", ids, budget)
        self.split = read_split(self.path / "split")
        self.item_ids: list[str] = self.split.item_ids
        if self.catalog.num_items != self.split.num_items:
            raise LinkedOutError(
                f"{self.path}: catalog.lance holds {self.catalog.num_items} items, the split "
                f"{self.split.num_items}: the run directory is damaged; train it again"
            )
        self.index = {item: i + 1 for i, item in enumerate(self.item_ids)}
        self.layers: list[int] = self.config["layers"]
        self.user_index = {u: i for i, u in enumerate(self.split.users)}
        self.max_len = self.module.config.max_len

    @torch.inference_mode()
    def user_states(self, histories: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """User states `[B, d]` and gates `[B, L]` after these histories (model indices)."""
        # Padded to the longest history here, not to max_len: pads are hidden from real steps,
        # so states are the same, and evaluation groups users by length to make this short.
        length = max(1, min(self.max_len, max(len(h) for h in histories)))
        padded = torch.tensor([left_pad(h, length) for h in histories])
        return self.module.encode(padded, self.catalog)


@torch.inference_mode()
def evaluate_run(
    path: str | Path,
    splits: tuple[str, ...] = ("valid", "test"),
    write: bool = False,
    batch_size: int = 1024,
    memory_budget: int | None = None,
) -> dict:
    """Metrics of the model and of popularity on each split, plus two views of test: the
    cold-start slice (targets never seen in training) and `test_unmasked`, ranked without
    masking the user's earlier items (RecBole's rule, for side-by-side comparisons)."""
    run = TrainedRun(path, memory_budget)
    split = run.split
    popularity = split.train_counts()
    popularity[0] = float("-inf")
    seen = torch.zeros(split.num_items, dtype=torch.bool)
    seen[[i for seq in split.train for i in seq]] = True
    results: dict = {}
    gates = None
    for name in splits:
        histories = [split.history(u, name) for u in range(len(split.users))]
        targets = torch.tensor([split.target(u, name) for u in range(len(split.users))])
        h, gate = _states(run, histories, batch_size)
        ranks, ranks_unmasked = rank_targets(
            run.module.model, run.catalog, h, gate, targets, histories, batch_size
        )
        pop_ranks, pop_unmasked = fixed_score_ranks(popularity, targets, histories)
        results[name] = _metrics(ranks, pop_ranks)
        if name == "test":
            cold = ~seen[targets]
            if cold.any():
                results["test_cold_start"] = _metrics(ranks[cold], pop_ranks[cold])
            results["test_unmasked"] = _metrics(ranks_unmasked, pop_unmasked)
            if run.module.model.content:
                gates = gate
    if gates is not None:
        results["gate"] = {"layers": run.layers, "mean": gates.mean(0).tolist()}
    if write:
        (run.path / "metrics.json").write_text(json.dumps(results, indent=2) + "\n")
        if gates is not None and len(run.layers) > 1:
            plot_gates(run.layers, gates, run.path / "gates.png")
    return results


def _states(
    run: TrainedRun, histories: list[list[int]], batch_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every user's state and gate, in user order. Users of similar history length are batched
    together, so a batch's sequences are as short as its longest history."""
    order = sorted(range(len(histories)), key=lambda u: len(histories[u]))
    h = gate = None
    for start in range(0, len(order), batch_size):
        users = order[start : start + batch_size]
        h_batch, gate_batch = run.user_states([histories[u] for u in users])
        if h is None:
            h = h_batch.new_empty((len(histories), h_batch.shape[1]))
            gate = gate_batch.new_empty((len(histories), gate_batch.shape[1]))
        h[users], gate[users] = h_batch, gate_batch
    return h, gate


def _metrics(model: torch.Tensor, popularity: torch.Tensor) -> dict:
    results = {}
    for key, ranks in (("model", model), ("popularity", popularity)):
        metrics = RankingMetrics()
        metrics.update(ranks)
        results[key] = metrics.compute()
    return results


def write_run_catalog(
    run: Path, checkpoint: Path, module: LinkedOutModule, item_ids: list[str]
) -> None:
    """Write the checkpoint's per-depth item vectors to `run/catalog.lance`, chunk by chunk,
    from the training module's item table: ranking and serving then never run the item tower
    over the catalog again."""
    state = torch.load(checkpoint, map_location=module.device, weights_only=False)["state_dict"]
    module.load_state_dict(state)
    module.eval()
    model = module.model
    shape = (len(item_ids) + 1, model.layers, model.expert_dim)
    with torch.inference_mode():
        chunks = module.code_chunks() if model.content else None
        write_catalog(run / "catalog.lance", chunks, item_ids, shape)


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
