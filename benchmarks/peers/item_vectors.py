"""One text vector per catalog item, for the peers that read one (UniSRec, FDSA), taken from the
feature dataset LinkedOut trains on, so peer and LinkedOut read the same MiniLM features.

Runs in the project's environment (it reads Lance); the peers' environment reads what it writes:

    python benchmarks/peers/item_vectors.py --features titles.lance --split out/benchmark/split \\
        --out out/benchmark/peers/item_vectors

writes `item_vectors.npy` (`[items, D]` float32, rows in `items.tsv` order) and
`item_vectors.json` (where they came from, and the sha256 of the `items.tsv` they follow).

Which vector: the last stored depth's slot 0. For a text backbone slot 0 is the mean of the
title's tokens (`linkedout/extract/pool.py`), which is the pooling all-MiniLM-L6-v2 is trained
to give its sentence embedding with (sentence-transformers then L2-normalises; UniSRec's
whitening and FDSA's adapter learn their own scale, so the vectors are left as stored).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from linkedout.errors import LinkedOutError  # noqa: E402
from linkedout.storage import FeatureStore  # noqa: E402

FORMAT = "linkedout-item-vectors/1"


def read_items(split: Path) -> tuple[list[str], str]:
    """The catalog's item ids in `items.tsv` order, and that file's sha256."""
    raw = (split / "items.tsv").read_bytes()
    lines = raw.decode("utf-8").splitlines()
    if not lines or lines[0] != "item":
        raise LinkedOutError(f"{split}/items.tsv: want a header line 'item'")
    return lines[1:], hashlib.sha256(raw).hexdigest()


def export(features: str, split: Path, out: Path, layer: int | None = None, slot: int = 0) -> dict:
    """Write `out.npy` and `out.json`; return the JSON's content."""
    store = FeatureStore.open(features)
    manifest = store.manifest
    depth = manifest.layers[-1] if layer is None else layer
    if not 0 <= slot < manifest.tokens_per_layer:
        raise LinkedOutError(
            f"--slot {slot}: the dataset keeps slots 0..{manifest.tokens_per_layer - 1}"
        )
    items, items_sha = read_items(split)
    tokens = store.read_tokens(items, layers=[depth])  # [N, 1, T, D]
    vectors = tokens[:, 0, slot].float().numpy().astype(np.float32)
    if not np.isfinite(vectors).all():
        raise LinkedOutError(f"{features}: non-finite values in depth {depth}, slot {slot}")
    meta = {
        "format": FORMAT,
        "features": str(features),
        "features_version": store.version,
        "backbone": manifest.backbone,
        "layer": depth,
        "slot": slot,
        "pooling": manifest.pooling,
        "items": len(items),
        "dim": int(vectors.shape[1]),
        "items_sha256": items_sha,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    np.save(out.with_suffix(".npy"), vectors)
    out.with_suffix(".json").write_text(json.dumps(meta, indent=1) + "\n")
    return meta


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--features", required=True, help="the LinkedOut feature dataset (URI)")
    parser.add_argument("--split", type=Path, required=True, help="a linkedout-split/1 directory")
    parser.add_argument("--out", type=Path, required=True, help="OUT.npy and OUT.json")
    parser.add_argument("--layer", type=int, help="stored depth to read (default: the last)")
    parser.add_argument("--slot", type=int, default=0, help="token slot (0: the mean)")
    args = parser.parse_args(argv)
    try:
        meta = export(args.features, args.split, args.out, args.layer, args.slot)
    except LinkedOutError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(
        f"wrote {args.out.with_suffix('.npy')}: {meta['items']} items x {meta['dim']} "
        f"(depth {meta['layer']}, slot {meta['slot']})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
