"""Where the public MicroLens-50K files live, fetched once from the official site if needed.

MicroLens' terms allow research use and forbid re-distribution, so the files are never copied
into a repository: they are read where the user keeps them, or downloaded into a user cache.
"""

from __future__ import annotations

import os
import shutil
import urllib.error
import urllib.request
from pathlib import Path

from linkedout.errors import LinkedOutError

MICROLENS_FILES = ("MicroLens-50k_pairs.tsv", "MicroLens-50k_titles.csv")
MICROLENS_URL = "https://recsys.westlake.edu.cn/MicroLens-50k-Dataset/"
_CHECKOUT_SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "microlens-50k"


def microlens_50k(download: bool = True, timeout: float = 30.0) -> Path:
    """The folder holding MicroLens-50K's pairs and titles.

    Looked up in $LINKEDOUT_DATA when set (and only there), else in `../shared/data/microlens-50k`
    beside this checkout, else in the cache ($LINKEDOUT_CACHE or ~/.cache/linkedout), where it
    is downloaded from the official site ($LINKEDOUT_MICROLENS_URL overrides the address).
    """
    if os.environ.get("LINKEDOUT_DATA"):
        folder = Path(os.environ["LINKEDOUT_DATA"])
        if not _complete(folder):
            raise LinkedOutError(
                f"LINKEDOUT_DATA={folder} does not hold {' and '.join(MICROLENS_FILES)}: "
                "put both files there, or unset it to download them"
            )
        return folder
    if _complete(_CHECKOUT_SHARED):
        return _CHECKOUT_SHARED
    cache = Path(os.environ.get("LINKEDOUT_CACHE", Path.home() / ".cache" / "linkedout"))
    folder = cache / "microlens-50k"
    if _complete(folder):
        return folder
    url = os.environ.get("LINKEDOUT_MICROLENS_URL", MICROLENS_URL)
    if not download:
        raise LinkedOutError(f"MicroLens-50K is not in {folder}: {_where_to_put(folder)}")
    folder.mkdir(parents=True, exist_ok=True)
    for name in MICROLENS_FILES:
        target = folder / name
        if target.exists():
            continue
        partial = target.with_suffix(target.suffix + ".part")
        try:
            with urllib.request.urlopen(url.rstrip("/") + "/" + name, timeout=timeout) as r:
                with open(partial, "wb") as f:
                    shutil.copyfileobj(r, f)
        except (urllib.error.URLError, OSError) as e:
            partial.unlink(missing_ok=True)
            reason = getattr(e, "reason", e)
            raise LinkedOutError(
                f"could not download {name} from {url} ({reason}): {_where_to_put(folder)}"
            ) from None
        partial.rename(target)  # only whole files count as downloaded
    return folder


def _complete(folder: Path) -> bool:
    return all((folder / name).is_file() for name in MICROLENS_FILES)


def _where_to_put(folder: Path) -> str:
    return (
        f"put {' and '.join(MICROLENS_FILES)} from the MicroLens project page "
        f"({MICROLENS_URL}) in {folder}, or in a folder named by LINKEDOUT_DATA"
    )
