"""A trained run, loaded once: full-ranking evaluation, baselines and the gate plot."""

from __future__ import annotations

from pathlib import Path

import torch

from linkedout.errors import LinkedOutError
from linkedout.memory import MemoryBudget
from linkedout.recommend.catalog import Catalog
from linkedout.recommend.loaded_run import LoadedRun
from linkedout.recommend.metrics import RankingMetrics, fixed_score_ranks
from linkedout.recommend.model import LinkedOut
from linkedout.recommend.ranking import rank_targets
from linkedout.recommend.run import EvalReport, GateReport, RunDir, SplitMetrics


class TrainedRun(LoadedRun):
    """A run with the item embeddings training wrote (`catalog.lance`, version 1), for
    full-ranking evaluation.

    The embeddings are loaded when they fit `memory_budget` (default: half the free memory),
    else ranked chunk by chunk from disk: same results, one read of the file per ranking pass.
    `model`, `new_item_lift`: as LoadedRun's.

    config.json, the checkpoint and catalog.lance must carry the same run id (none, for runs
    trained before run ids): files mixed from two runs are refused, not ranked."""

    def __init__(
        self,
        path: str | Path | RunDir,
        memory_budget: MemoryBudget | None = None,
        model: LinkedOut | None = None,
        new_item_lift: float | None = None,
    ):
        super().__init__(path, model, new_item_lift)
        ids = self.model.ids.weight.detach() if self.model.ids is not None else None
        budget = MemoryBudget.resolve(None) if memory_budget is None else memory_budget
        self.catalog: Catalog = self.run.catalog(ids, budget, self.config.run_id)
        if self.catalog.num_items != self.split.num_items:
            raise LinkedOutError(
                f"{self.path}: catalog.lance holds {self.catalog.num_items} items, the split "
                f"{self.split.num_items}: the run directory is damaged; train it again"
            )

    @torch.inference_mode()
    def user_states(self, histories: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """User states `[B, d]` and gates `[B, L]` after these histories (model indices)."""
        # Evaluation groups users by history length, so padding to the longest is short.
        padded = self.pad(histories)
        return self.model.encode(padded, self.catalog.experts_of(padded.reshape(-1)))


def evaluate_run(
    path: str | Path,
    splits: tuple[str, ...] = ("valid", "test"),
    write: bool = False,
    batch_size: int = 1024,
    memory_budget: MemoryBudget | None = None,
    new_item_lift: float | None = None,
) -> EvalReport:
    """`evaluate` of the run at `path` (ranked with `new_item_lift` when given, else the
    run's); with `write`, into its metrics.json and gates.png."""
    trained = TrainedRun(path, memory_budget, new_item_lift=new_item_lift)
    report, gates = evaluate(trained, splits, batch_size)
    if write:
        write_report(trained, report, gates)
    return report


LONG_TAIL = 5
"""The long-tail slice: test targets with 1 to this many training interactions."""


@torch.inference_mode()
def evaluate(
    run: TrainedRun, splits: tuple[str, ...] = ("valid", "test"), batch_size: int = 1024
) -> tuple[EvalReport, torch.Tensor | None]:
    """Metrics of the model and of popularity on each split, plus two views of test: the
    cold-start slice (targets never seen in training), the long tail (targets seen 1 to
    `LONG_TAIL` times in training) and `test_unmasked`, ranked without
    masking the user's earlier items (RecBole's rule, for side-by-side comparisons). Also the
    test users' gates `[users, L]` (None for ID-only models or without test)."""
    split = run.split
    counts = split.train_counts()
    popularity = counts.clone()
    popularity[0] = float("-inf")
    results: dict[str, SplitMetrics] = {}
    gates = None
    for name in splits:
        histories = [split.history(u, name) for u in range(len(split.users))]
        targets = torch.tensor([split.target(u, name) for u in range(len(split.users))])
        h, gate = states(run, histories, batch_size)
        ranks, ranks_unmasked = rank_targets(
            run.model, run.catalog, h, gate, targets, histories, batch_size
        )
        pop_ranks, pop_unmasked = fixed_score_ranks(popularity, targets, histories)
        results[name] = _metrics(ranks, pop_ranks)
        if name == "test":
            cold = counts[targets] == 0
            if cold.any():
                results["test_cold_start"] = _metrics(ranks[cold], pop_ranks[cold])
            # Rare items: where ID vectors are poorest and content should help most.
            tail = (counts[targets] >= 1) & (counts[targets] <= LONG_TAIL)
            if tail.any():
                results["test_long_tail"] = _metrics(ranks[tail], pop_ranks[tail])
            results["test_unmasked"] = _metrics(ranks_unmasked, pop_unmasked)
            if run.model.content:
                gates = gate
    report = EvalReport(results)
    if gates is not None:
        report.gate = GateReport(run.experts, gates.mean(0).tolist())
    return report, gates


def write_report(run: TrainedRun, report: EvalReport, gates: torch.Tensor | None) -> None:
    run.run.write_metrics(report)
    if gates is not None and len(run.experts) > 1:
        plot_gates(run.experts, gates, run.run.gates_file)


def states(
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


def _metrics(model: torch.Tensor, popularity: torch.Tensor) -> SplitMetrics:
    results = {}
    for key, ranks in (("model", model), ("popularity", popularity)):
        metrics = RankingMetrics()
        metrics.update(ranks)
        results[key] = metrics.compute()
    return SplitMetrics(**results)


def plot_gates(layers: list[int | str], gates: torch.Tensor, path: Path, sample: int = 24) -> None:
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
