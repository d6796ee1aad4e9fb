"""Reading a run's checkpoint files: tensors and plain values only, every failure one line.

A checkpoint from someone else must never run code: `torch.load(weights_only=True)` refuses
any pickled object, and an explicit True wins over TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD (torch 2.6+).
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import torch

from linkedout.errors import LinkedOutError, first_line


def read_checkpoint(path: Path, map_location="cpu", mmap: bool = False) -> dict:
    """A checkpoint's dict (tensors and plain values); a missing, damaged or code-carrying
    file is one line naming it. `mmap`: map the tensors instead of reading them."""
    try:
        saved = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except FileNotFoundError:
        raise LinkedOutError(
            f"{path} is missing: the run directory is damaged; train it again"
        ) from None
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        if found is None:  # random bytes, or a pickle stream cut short
            raise LinkedOutError(
                f"{path} is not a readable checkpoint (not a torch checkpoint file): the run "
                "directory is damaged; train it again"
            ) from None
        # weights_only refused an object: a checkpoint of ours never holds one.
        raise LinkedOutError(
            f"{path} holds pickled objects, not only weights ({found.group(1)}): refused, "
            "loading it could run code; use checkpoints written by `linkedout train` only"
        ) from None
    except Exception as e:  # truncated, not a zip, random bytes: torch raises many kinds
        raise LinkedOutError(
            f"{path} is not a readable checkpoint ({first_line(e, 160)}): the run directory is "
            "damaged; train it again"
        ) from None
    if not isinstance(saved, dict) or "state_dict" not in saved:
        raise LinkedOutError(
            f"{path} is not a linkedout checkpoint (no state_dict): train the run again"
        )
    return saved


def checkpoint_run_id(saved: dict) -> str | None:
    stamp = saved.get("linkedout")
    return stamp.get("run_id") if isinstance(stamp, dict) else None
