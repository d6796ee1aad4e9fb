"""The LightningModule: losses, full-catalog validation, and the ranking evaluate and serve use."""

from __future__ import annotations

import shutil
from dataclasses import asdict
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F

from linkedout.errors import LinkedOutError
from linkedout.recommend.catalog import Catalog, build_catalog
from linkedout.recommend.metrics import RankingMetrics
from linkedout.recommend.model import LinkedOut, ModelConfig, balance_loss
from linkedout.recommend.ranking import rank_targets


class LinkedOutModule(L.LightningModule):
    def __init__(
        self,
        model: dict,
        num_items: int,
        layers: int,
        tokens: int,
        dim: int,
        lr: float = 1e-3,
        weight_decay: float = 0.01,
        negatives: int = 1024,
        full_softmax_max_items: int = 4096,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.config = ModelConfig(**model)
        self.model = LinkedOut(self.config, num_items, layers, tokens, dim)
        self.sampled = num_items > full_softmax_max_items
        # Filled by `attach`: the item tokens are data (read from the store), not weights.
        self.register_buffer("item_tokens", torch.zeros(0), persistent=False)
        self.register_buffer("log_q", torch.zeros(num_items), persistent=False)
        self.register_buffer("unseen", torch.zeros(num_items, dtype=torch.bool), persistent=False)
        self.metrics = RankingMetrics()
        self._catalog: Catalog | None = None
        self._histories: list[list[int]] | None = None
        self._states: list[tuple[torch.Tensor, ...]] = []
        self._memory_budget: int | None = None
        self._spill_dir: Path | None = None

    @classmethod
    def create(
        cls, config: ModelConfig, num_items: int, shape: tuple[int, int, int], **kwargs
    ) -> LinkedOutModule:
        return cls(asdict(config), num_items, *shape, **kwargs)

    def attach(
        self,
        item_tokens: torch.Tensor,
        train_counts: torch.Tensor | None = None,
        histories: list[list[int]] | None = None,
        memory_budget: int | None = None,
        spill_dir: Path | None = None,
    ) -> None:
        """Give the module its item tokens `[N, L, T, D]`, the training popularity (for the
        sampled-softmax proposal) and each user's history (masked in validation ranking).
        Validation holds the catalog's embeddings in memory up to `memory_budget` bytes (no
        limit when None), else writes them to a Lance dataset in `spill_dir`."""
        if isinstance(item_tokens, torch.Tensor):
            self.item_tokens = item_tokens  # a buffer: moves to the GPU with the module
        else:  # streamed from the store: stays a plain attribute, read batch by batch
            del self.item_tokens
            self.item_tokens = item_tokens
        if train_counts is not None:
            # Items no training sequence holds are left out of the training softmax, as items
            # that arrive after training would be: pushed down as ever-negatives, their content
            # would be learned as "never relevant" and cold-start ranking would be lost.
            self.unseen = train_counts == 0
            q = train_counts.double() ** 0.75  # word2vec's smoothing: frequent, not only popular
            self.log_q = torch.log(q / q.sum()).float().clamp_min(-1e4)
        self._histories = histories
        self._memory_budget = memory_budget
        self._spill_dir = spill_dir

    # -- shared by training, evaluation and serving -----------------------------------------
    def catalog(self) -> Catalog:
        """The current model's catalog over the attached item tokens."""
        ids = self.model.ids.weight if self.model.ids is not None else None
        if self._memory_budget is None or self._spill_dir is None:
            budget, spill = float("inf"), None
        else:
            budget, spill = self._memory_budget, self._spill_path()
        return build_catalog(self.model, self.item_tokens, ids, budget, spill, self.device)

    def _spill_path(self) -> Path:
        # One per process: data-parallel ranks each rank their own users over the catalog.
        return self._spill_dir / f"validation-catalog-rank{self.global_rank}.lance"

    def encode(self, history: torch.Tensor, catalog: Catalog) -> tuple[torch.Tensor, torch.Tensor]:
        """Padded histories `[B, S]` -> last user state `[B, d]` and its gate `[B, L]`."""
        flat = history.reshape(-1)
        experts = catalog.experts_of(flat)
        vectors = self.model.item_inputs(experts, flat).reshape(*history.shape, -1)
        h = self.model.user_states(vectors, history == 0)[:, -1]
        return h, self.model.user_gate(h)

    # -- training ---------------------------------------------------------------------------
    def training_step(self, batch, batch_idx):
        inputs, targets, *ahead = batch  # + a ReadAhead when tokens stream from the store
        padding = inputs == 0
        valid = targets != 0
        if self.sampled:
            negatives = torch.multinomial(
                self.log_q.exp(), self.hparams.negatives, replacement=True
            )
            needed = torch.unique(torch.cat([inputs.flatten(), targets.flatten(), negatives]))
        else:
            needed = torch.arange(self.hparams.num_items, device=inputs.device)
        experts = None
        if self.model.content:
            tokens = self.item_tokens.take(needed, ahead[0]) if ahead else self.item_tokens[needed]
            experts = self.model.item_experts(tokens.to(self.device))
        where = torch.searchsorted(needed, inputs)
        # index_select rather than `tensor[index]` here and below: under deterministic=True the
        # backward of advanced indexing takes a sort-based path that made an epoch 5x slower.
        vectors = self.model.item_inputs(
            None if experts is None else experts.index_select(0, where.flatten()), inputs.flatten()
        ).reshape(*inputs.shape, -1)
        h = self.model.user_states(vectors, padding)[valid]  # [P, d] positions with a target
        gate = self.model.user_gate(h)
        ids = self.model.ids.weight.index_select(0, needed) if self.model.ids is not None else None
        target_col = torch.searchsorted(needed, targets[valid])
        if self.sampled:
            loss = self._sampled_softmax(h, gate, experts, ids, target_col, needed, negatives)
        else:
            logits = self.model.score(h, gate, experts, ids)  # [P, N]
            loss = F.cross_entropy(logits.masked_fill(self.unseen, float("-inf")), target_col)
        if not torch.isfinite(loss):
            raise LinkedOutError(
                f"the loss became {loss.item()} at step {self.global_step}: lower --lr, or "
                "check the features for NaN/inf (linkedout info)"
            )
        self.log("train_loss", loss, prog_bar=True, batch_size=int(valid.sum()))
        if self.config.fusion == "moe" and self.config.balance_weight > 0:
            loss = loss + self.config.balance_weight * balance_loss(gate)
        return loss

    def _sampled_softmax(self, h, gate, experts, ids, target_col, needed, negatives):
        """Softmax over the target and shared negatives drawn from q, with logQ correction, so
        the estimate is unbiased for the full softmax; a negative equal to the target is masked.
        Scores only those candidates, not every item the batch needed for its inputs."""
        neg_col = torch.searchsorted(needed, negatives)
        log_q = self.log_q[needed]

        def rows(col: torch.Tensor, table: torch.Tensor | None) -> torch.Tensor | None:
            return None if table is None else table.index_select(0, col)

        pos = self.model.score_pairs(h, gate, rows(target_col, experts), rows(target_col, ids))
        neg = self.model.score(h, gate, rows(neg_col, experts), rows(neg_col, ids))
        pos = pos[:, None] - log_q[target_col][:, None]
        neg = neg - log_q[neg_col]
        neg = neg.masked_fill(neg_col[None, :] == target_col[:, None], float("-inf"))
        full = torch.cat([pos, neg], 1)
        return F.cross_entropy(full, torch.zeros(len(full), dtype=torch.long, device=full.device))

    def configure_optimizers(self):
        return torch.optim.AdamW(
            self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay
        )

    # -- validation: full ranking over the catalog, earlier items masked --------------------
    def on_validation_epoch_start(self) -> None:
        self._catalog = self.catalog()
        self.metrics = RankingMetrics()
        self._states = []

    def validation_step(self, batch, batch_idx):
        history, target, users = batch
        h, gate = self.encode(history, self._catalog)
        self._states.append((h, gate, target, users))

    def on_validation_epoch_end(self) -> None:
        if self._states:  # users' states first, then one pass over the catalog ranks them all
            h, gate, target, users = (torch.cat(x) for x in zip(*self._states, strict=True))
            seen = [self._histories[u] if self._histories else [] for u in users.tolist()]
            masked, _ = rank_targets(self.model, self._catalog, h, gate, target, seen)
            self.metrics.update(masked)
            self._states = []
        if self.trainer.world_size > 1:  # each rank ranked its share of the users
            mine = self.metrics.to_tensor().to(self.device)
            summed = self.trainer.strategy.reduce(mine, reduce_op="sum")
            self.metrics = RankingMetrics.from_tensor(summed.cpu(), self.metrics.ks)
        result = self.metrics.compute()
        for name in ("HR@10", "NDCG@10", "HR@20", "NDCG@20", "MRR"):
            self.log(f"val_{name}", result[name], prog_bar=name in ("HR@10", "NDCG@10"))
        self._catalog = None

    def on_fit_end(self) -> None:
        if self._spill_dir is not None:
            shutil.rmtree(self._spill_path(), ignore_errors=True)
