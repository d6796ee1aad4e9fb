"""Where a training epoch's time goes: the steps of `linkedout train` on real data, timed part
by part (torch.profiler's operator table and wall time per phase), without Lightning's loop.

    python benchmarks/train_profile.py FEATURES PAIRS [--fusion moe --ids] [--steps 40]

Phases of one step: the batch (collate), the forward (item vectors, the sequence model, the
softmax), the backward, the optimizer. The steps taken are a fixed random sample of an
epoch's batches, so the figures scale to an epoch by the number of batches; validation is one
full pass over the validation users, timed as a whole.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import lightning as L
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from linkedout.recommend.config import ModelConfig, TrainConfig, depths_of  # noqa: E402
from linkedout.recommend.run import RunDir  # noqa: E402
from linkedout.recommend.train import prepare  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("features")
    parser.add_argument("pairs")
    parser.add_argument("--fusion", default="moe")
    parser.add_argument("--ids", action="store_true")
    parser.add_argument(
        "--expert-dim", type=int, default=ModelConfig.expert_dim, help="each depth's expert width"
    )
    parser.add_argument("--layers", default="", help="stored depths to read (default: all)")
    parser.add_argument("--steps", type=int, default=40, help="batches timed (of an epoch's)")
    parser.add_argument(
        "--table",
        type=int,
        default=25,
        help="rows of the operator table (0: no profiler, whose overhead slows the steps)",
    )
    parser.add_argument("--json", type=Path, help="write the phase figures here")
    parser.add_argument(
        "--deterministic", action="store_true", help="torch.use_deterministic_algorithms"
    )
    args = parser.parse_args()
    torch.use_deterministic_algorithms(args.deterministic)

    with tempfile.TemporaryDirectory() as tmp:
        config = TrainConfig(
            features=args.features,
            interactions=args.pairs,
            out=str(Path(tmp) / "run"),
            model=ModelConfig(fusion=args.fusion, ids=args.ids, expert_dim=args.expert_dim),
            layers=depths_of(args.layers) if args.layers else [],
            quiet=True,
        )
        start = time.perf_counter()
        prepared = prepare(config, RunDir(config.out))
        setup = time.perf_counter() - start
        module, data = prepared.module, prepared.data
        data.trainer = None
        module.train()
        loader = data.train_dataloader()
        optimizer = module.configure_optimizers()
        batches = len(loader)
        every = max(1, batches // args.steps)
        phases = {"collate": 0.0, "forward": 0.0, "backward": 0.0, "optimizer": 0.0}
        timed = 0

        # A trainer to read world_size from; the step's logging goes nowhere outside a loop.
        module.trainer = L.Trainer(
            logger=False, enable_progress_bar=False, enable_checkpointing=False
        )
        module.log = lambda *args, **kwargs: None
        targets = 0
        profiling = args.table > 0
        activities = [torch.profiler.ProfilerActivity.CPU]
        with torch.profiler.profile(activities=activities) if profiling else nullcontext() as prof:
            it = iter(loader)
            for i in range(batches):
                t0 = time.perf_counter()
                batch = next(it)
                t1 = time.perf_counter()
                if i < 2:  # warm-up, untimed: first allocations, compiling
                    module.training_step(batch, i).backward()
                    continue
                if i % every or timed >= args.steps:
                    continue
                loss = module.training_step(batch, i)
                t2 = time.perf_counter()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                t3 = time.perf_counter()
                optimizer.step()
                t4 = time.perf_counter()
                for name, dt in zip(phases, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
                    phases[name] += dt
                targets += int((batch.targets != 0).sum())
                timed += 1
        if profiling:
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.table))
        scale = batches / timed
        per_epoch = {k: v * scale for k, v in phases.items()}
        module.eval()
        start = time.perf_counter()
        with torch.inference_mode():
            module.on_validation_epoch_start()
            for j, batch in enumerate(data.val_dataloader()):
                module.validation_step(batch, j)
            module.on_validation_epoch_end()
        val = time.perf_counter() - start
        figures = {
            "fusion": args.fusion,
            "ids": args.ids,
            "threads": torch.get_num_threads(),
            "setup_seconds": setup,
            "batches_per_epoch": batches,
            "batches_timed": timed,
            "targets_timed": targets,
            "epoch_seconds_by_phase": per_epoch,
            "epoch_seconds": sum(per_epoch.values()),
            "validation_seconds": val,
            "validation": module.metrics.compute(),
        }
        print(json.dumps(figures, indent=2))
        if args.json:
            args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
