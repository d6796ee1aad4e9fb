"""The Lightning callbacks of a run: the checkpoint that survives a moved run directory, the
per-epoch summary (stderr and epochs.json) and the random states a resumed run needs."""

from __future__ import annotations

import os
import random
import sys
import time

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from linkedout.recommend.run import RunDir


class RunCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint, resumable in a run directory that moved (another mount,
    a copy): Lightning forgets the best score so far when the checkpoint folder's path
    changed, and a resumed run would then keep a worse epoch as best.ckpt."""

    def load_state_dict(self, state_dict: dict) -> None:
        old = state_dict.get("dirpath")
        if old and self.dirpath and old != self.dirpath:

            def moved(path):
                return os.path.join(self.dirpath, os.path.basename(path)) if path else path

            state_dict = dict(state_dict, dirpath=self.dirpath)
            for key in ("best_model_path", "kth_best_model_path", "last_model_path"):
                if key in state_dict:
                    state_dict[key] = moved(state_dict[key])
            best = state_dict.get("best_k_models") or {}
            state_dict["best_k_models"] = {moved(k): v for k, v in best.items()}
        super().load_state_dict(state_dict)


class EpochSummary(L.Callback):
    """One line per epoch on stderr (loss, validation ranking, seconds, a new best marked),
    and the same in `epochs.json`, rewritten each epoch, for curves and throughput."""

    def __init__(self, run: RunDir):
        self.run = run
        self.best = float("-inf")
        self.epochs: list[dict] = []
        self._train_start = self._val_start = 0.0
        self._val_seconds = 0.0

    # A resumed run continues the list and the best so far of its checkpoint's epoch.
    def state_dict(self) -> dict:
        return {"epochs": [dict(e) for e in self.epochs], "best": self.best}

    def load_state_dict(self, state: dict) -> None:
        self.epochs = [dict(e) for e in state.get("epochs", [])]
        self.best = float(state.get("best", float("-inf")))

    def on_train_epoch_start(self, trainer, module) -> None:
        self._train_start = time.perf_counter()
        self._val_seconds = 0.0

    def on_validation_epoch_start(self, trainer, module) -> None:
        self._val_start = time.perf_counter()

    def on_validation_end(self, trainer, module) -> None:
        # Not on_validation_epoch_end: Lightning runs that of callbacks before the module's,
        # where the ranking happens, and the ranking would count as training time.
        self._val_seconds += time.perf_counter() - self._val_start

    def on_train_epoch_end(self, trainer, module) -> None:  # runs after the epoch's validation
        m = trainer.callback_metrics
        if "val_HR@10" not in m or not trainer.is_global_zero:
            return
        seconds = time.perf_counter() - self._train_start
        record = {
            "epoch": trainer.current_epoch,
            "train_loss": float(m["train_loss"]) if "train_loss" in m else None,
            "train_seconds": seconds - self._val_seconds,
            "val_seconds": self._val_seconds,
            "train_sequences": len(trainer.train_dataloader.dataset),
            "threads": torch.get_num_threads(),  # per process: the times depend on it
        } | {f"val_{k}": float(m[f"val_{k}"]) for k in ("HR@10", "NDCG@10", "HR@20", "NDCG@20")}
        self.epochs.append(record)
        self.run.write_epochs(self.epochs)
        ndcg = record["val_NDCG@10"]
        mark = " (best)" if ndcg > self.best else ""
        self.best = max(self.best, ndcg)
        loss = f"loss {record['train_loss']:.4f}, " if record["train_loss"] is not None else ""
        print(
            f"epoch {trainer.current_epoch}: {loss}val HR@10 {record['val_HR@10']:.4f}, "
            f"NDCG@10 {ndcg:.4f}{mark} ({record['train_seconds']:.0f} s train, "
            f"{self._val_seconds:.0f} s validation)",
            file=sys.stderr,
            flush=True,
        )


class ResumeState(L.Callback):
    """The random states a resumed run needs to draw what the uninterrupted run would have:
    torch's global generator (dropout, sampled negatives) and CUDA's, Python's and NumPy's
    (seeded by Lightning), and the batch order's generator (`LengthGroupedBatches`, which
    advances each epoch). Saved with every checkpoint as tensors and plain values, so the
    checkpoint loads with `weights_only=True`.

    The global states go back when the checkpoint is restored, before Lightning opens the first
    resumed epoch's data loader (which draws from torch's generator, as it does each epoch);
    the batch order's when training starts, before the loader's first batch."""

    def __init__(self):
        self._trainer: L.Trainer | None = None
        self._batch_order: torch.Tensor | None = None

    def setup(self, trainer, pl_module, stage: str) -> None:
        self._trainer = trainer

    def state_dict(self) -> dict:
        import numpy as np

        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        version, mt, gauss_next = random.getstate()
        state = {
            "torch": torch.get_rng_state(),
            "python": [version, torch.tensor(mt, dtype=torch.int64), gauss_next],
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        generator = self._batch_generator()
        if generator is not None:
            state["batch_order"] = generator.get_state()
        return state

    def load_state_dict(self, state: dict) -> None:
        import numpy as np

        torch.set_rng_state(state["torch"])
        version, mt, gauss_next = state["python"]
        random.setstate((version, tuple(mt.tolist()), gauss_next))
        kind, keys, pos, has_gauss, gauss = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
        if "cuda" in state and torch.cuda.is_available():
            if len(state["cuda"]) == torch.cuda.device_count():
                torch.cuda.set_rng_state_all(state["cuda"])
        self._batch_order = state.get("batch_order")

    def on_train_start(self, trainer, pl_module) -> None:
        generator = self._batch_generator()
        if self._batch_order is not None and generator is not None:
            generator.set_state(self._batch_order)
        self._batch_order = None

    def _batch_generator(self) -> torch.Generator | None:
        trainer = self._trainer
        if trainer is None:
            return None
        try:
            loader = trainer.train_dataloader
        except AttributeError:
            return None
        sampler = getattr(loader, "batch_sampler", None)
        generator = getattr(sampler, "generator", None)
        return generator if isinstance(generator, torch.Generator) else None
