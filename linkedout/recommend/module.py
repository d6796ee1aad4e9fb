"""The LightningModule: the item table, the training step around the model's loss, and
full-catalog validation."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import lightning as L
import torch

from linkedout.errors import LinkedOutError
from linkedout.memory import MemoryBudget
from linkedout.recommend.catalog import CHUNK_ITEMS, Catalog, build_catalog
from linkedout.recommend.config import ModelConfig
from linkedout.recommend.data import Batch
from linkedout.recommend.metrics import RankingMetrics
from linkedout.recommend.model import LinkedOut, balance_loss
from linkedout.recommend.ranking import rank_targets
from linkedout.recommend.softmax import product_dtype
from linkedout.recommend.tokens import ItemTokens
from linkedout.recommend.training_items import TrainingItems


class LinkedOutModule(L.LightningModule):
    def __init__(
        self,
        model: dict,
        num_items: int,
        num_layers: int | None = None,
        tokens: int | None = None,
        dim: int | None = None,
        lr: float = 1e-3,
        weight_decay: float = 0.01,
        negatives: int = 1024,
        full_softmax_max_items: int = 100_000,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.model = LinkedOut.stored(model, num_items, num_layers, tokens, dim)
        self.config = self.model.config
        self.softmax_items = TrainingItems(num_items, num_items > full_softmax_max_items, negatives)
        # Filled by `attach`: the item tokens are data (read from the store), not weights.
        self.register_buffer("item_table", torch.zeros(0), persistent=False)
        self._streamed: ItemTokens | None = None
        # (item_table, its copy in the products' dtype): see `_table_in`
        self._low_table: tuple[torch.Tensor, torch.Tensor] | None = None
        self.metrics = RankingMetrics()
        self._catalog: Catalog | None = None
        self._histories: list[list[int]] | None = None
        self._states: list[tuple[torch.Tensor, ...]] = []
        self._memory_budget: MemoryBudget | None = None
        self._spill_dir: Path | None = None
        self._targets_per_batch: float | None = None
        self.run_id: str | None = None
        """The run this module trains or was read from: stamped on its checkpoints."""

    @classmethod
    def create(
        cls,
        config: ModelConfig,
        num_items: int,
        token_shape: tuple[int, int, int] | None,
        **kwargs,
    ) -> LinkedOutModule:
        """`token_shape`: (L, T, D) of an item's stored tokens (None for ID-only models)."""
        return cls(asdict(config), num_items, *(token_shape or (None, None, None)), **kwargs)

    def attach(
        self,
        item_tokens: ItemTokens | None,
        train_counts: torch.Tensor | None = None,
        histories: list[list[int]] | None = None,
        memory_budget: MemoryBudget | None = None,
        spill_dir: Path | None = None,
        targets_per_batch: float | None = None,
    ) -> None:
        """Give the module its item tokens `[N, L, T, D]` (None for ID-only models), the
        training popularity (candidates and the sampled-softmax proposal), each user's
        history (masked in validation ranking) and the targets an average training batch
        holds (every target then weighs the same, see `training_step`). The whitening is
        fitted on the tokens, and their reduced form is kept in memory when it fits
        `memory_budget` (no limit when None), else the tokens are read and reduced batch by
        batch. Validation holds the catalog's embeddings in memory up to the same budget, else
        writes them to a Lance dataset in `spill_dir`."""
        budget = MemoryBudget.unlimited() if memory_budget is None else memory_budget
        if self.model.content:
            if self.model.whitening is not None:
                self.model.whitening.fit(item_tokens)
            self._attach_tokens(item_tokens, budget)
        if train_counts is not None:
            # With content, items no training sequence holds stay out of the softmax and are
            # scored by content alone (an ID never trained stays at zero); ID-only is a
            # faithful SASRec, where every item competes.
            self.softmax_items.fit(train_counts, drop_unseen=self.model.content)
            if self.model.content and self.model.ids is not None:
                with torch.no_grad():
                    self.model.ids.weight[train_counts == 0] = 0
        self._histories = histories
        self._targets_per_batch = targets_per_batch
        self._memory_budget = memory_budget
        self._spill_dir = spill_dir

    def _attach_tokens(self, item_tokens: ItemTokens, budget: MemoryBudget) -> None:
        n, num_layers, t, dim = item_tokens.shape
        width = self.model.whitening.k if self.model.whitening is not None else dim
        low = product_dtype(self.device)
        # float32, and the steps' copy in the products' dtype where that is lower (`_table_in`)
        per_value = 4 if low == torch.float32 else 4 + low.itemsize
        if budget.fits(num_layers * n * t * width * per_value):
            with torch.no_grad():
                chunks = [
                    self.model.reduce_tokens(item_tokens.chunk(start, start + CHUNK_ITEMS))
                    for start in range(0, n, CHUNK_ITEMS)
                ]
            self.item_table = torch.cat(chunks, 1)  # [L, N, T, k], a buffer: moves with .to()
            self._streamed = None
        else:  # read from the store batch by batch and reduced in the step
            self._streamed = item_tokens
            if not self.softmax_items.sampled:
                raise LinkedOutError(
                    "the item features do not fit the memory budget, and a full softmax scores "
                    "every item at every step: raise --feature-memory-gb, or train with a "
                    "sampled softmax (--full-softmax-max-items 0)"
                )

    # -- the item table ---------------------------------------------------------------------
    @property
    def streamed_tokens(self) -> ItemTokens | None:
        """The table the training steps gather raw tokens from, when the reduced ones do not
        fit in memory (else None): the data module reads its batches ahead."""
        return self._streamed

    def reduced_tokens(
        self, items: torch.Tensor, prefetched=None, dtype: torch.dtype = torch.float32
    ) -> torch.Tensor:
        """Reduced tokens `[L, n, T, k]` of these item indices; held in memory, in `dtype` (the
        products' dtype in training) when asked."""
        if self._streamed is None:
            table = self._table_in(dtype)
            if len(items) == table.shape[1]:  # the whole catalog: no copy
                return table
            return table.index_select(1, items)
        raw = self._streamed.gather(items, prefetched)
        return self.model.reduce_tokens(raw.to(self.device))

    def _table_in(self, dtype: torch.dtype) -> torch.Tensor:
        """`item_table` in `dtype`, rounded once and kept: the compressor's products round it
        to bfloat16 under autocast anyway, so the same codes, without rounding the whole table
        (34 MB on MicroLens) at every step: about 2 of the item tower's 20-25 ms a step there."""
        table = self.item_table
        if dtype == table.dtype:
            return table
        # Made again when the table is another tensor (attached again, moved by .to()).
        held = self._low_table
        if held is None or held[0] is not table or held[1].dtype != dtype:
            self._low_table = held = (table, table.to(dtype))
        return held[1]

    def code_chunks(self) -> Iterator[torch.Tensor]:
        """`e` of every item, `CHUNK_ITEMS` rows at a time (the catalog being built)."""
        n = self.hparams.num_items
        for start in range(0, n, CHUNK_ITEMS):
            items = torch.arange(start, min(start + CHUNK_ITEMS, n), device=self.device)
            if self._streamed is None:
                yield self.model.item_codes(self.item_table[:, start : start + len(items)])
            else:
                yield self.model.item_codes(self.reduced_tokens(items))

    # -- shared by training, evaluation and serving -----------------------------------------
    def catalog(self) -> Catalog:
        """The current model's catalog over the attached item tokens."""
        ids = self.model.ids.weight if self.model.ids is not None else None
        if self._memory_budget is None or self._spill_dir is None:
            budget, spill = MemoryBudget.unlimited(), None
        else:
            budget, spill = self._memory_budget, self._spill_path()
        return build_catalog(self.model, self.code_chunks, ids, budget, spill)

    def _spill_path(self) -> Path:
        # One per process: data-parallel ranks each rank their own users over the catalog.
        return self._spill_dir / f"validation-catalog-rank{self.global_rank}.lance"

    def encode(self, history: torch.Tensor, catalog: Catalog) -> tuple[torch.Tensor, torch.Tensor]:
        """Padded histories `[B, S]` -> last user state `[B, d]` and its gate `[B, L]`."""
        return self.model.encode(history, catalog.experts_of(history.reshape(-1)))

    # -- training ---------------------------------------------------------------------------
    def training_step(self, batch: Batch, batch_idx):
        inputs, targets = batch.inputs, batch.targets
        step = self.softmax_items.draw(inputs, targets)
        reduced = None
        low = product_dtype(self.device)
        if self.model.content:
            reduced = self.reduced_tokens(step.needed, batch.tokens, low)
        loss, gate = self.model.loss(
            inputs,
            targets,
            step.needed,
            reduced,
            candidates=step.candidates,
            negatives=step.negatives,
            log_q=self.softmax_items.log_q,
            product_dtype=low,
        )
        if not torch.isfinite(loss):
            raise LinkedOutError(
                f"the loss became {loss.item()} at step {self.global_step}: lower --lr, or "
                "check the features for NaN/inf (linkedout info)"
            )
        count = int((targets != 0).sum())
        # The bar shows the running step loss; epochs.json gets the epoch's mean per target (a
        # step-only log would record the epoch's last, smallest batch).
        self.log("loss", loss, prog_bar=True, logger=False)
        self.log("train_loss", loss, on_step=False, on_epoch=True, batch_size=count)
        if self._targets_per_batch:
            # The loss is a mean over this batch's targets, and batches are grouped by history
            # length: a batch of long histories holds 10x the targets of a batch of short ones.
            # Scaled by targets / average targets, every target weighs the same in an epoch, as
            # in RecBole's one-target samples; a plain mean would weigh each target of a long
            # history 10x less (that cost 9% validation HR@10 on MicroLens). Each of W
            # data-parallel ranks holds 1/W of a batch, and gradients are averaged over ranks.
            loss = loss * (count * self.trainer.world_size / self._targets_per_batch)
        if self.config.fusion == "moe" and self.config.balance_weight > 0:
            loss = loss + self.config.balance_weight * balance_loss(gate)
        return loss

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # Read back by `RunDir`: a checkpoint copied from another run is refused.
        checkpoint["linkedout"] = {"run_id": self.run_id}

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
