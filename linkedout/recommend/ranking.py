"""Full-catalog ranking in one pass over the catalog's chunks: the target ranks validation and
evaluation count (serving's top-k is linkedout/service/ranker.py). Users' states are computed
first (they are small); then each chunk of item embeddings is read and scored against every
user, so a catalog stored on disk is read a fixed number of times per ranking, not once per user
batch."""

from __future__ import annotations

import torch

from linkedout.recommend.catalog import Catalog, CatalogChunk
from linkedout.recommend.metrics import count_outranking, history_entries


@torch.inference_mode()
def rank_targets(
    model,
    catalog: Catalog,
    h: torch.Tensor,
    gate: torch.Tensor,
    targets: torch.Tensor,
    histories: list[list[int]],
    batch_size: int = 1024,
) -> tuple[torch.Tensor, torch.Tensor]:
    """1-based ranks `[U]` of each user's target among all items, with the user's `histories`
    masked and without, as `metrics.target_ranks` defines them (ties count against the target).

    Two passes over the catalog: the first takes each target's score from the same product
    (same users, same chunk, same shapes) the second compares every item's score with, so an
    item that ties the target exactly is counted against it, as in one product over the whole
    catalog. Users are ranked in target order, so the first pass only scores the one or two
    chunks that hold a batch's targets."""
    device = h.device
    order = torch.argsort(targets.cpu(), stable=True).to(device)
    h, gate, targets = h[order], gate[order], targets.to(device)[order]
    histories = [histories[u] for u in order.tolist()]
    batches = [(b, min(b + batch_size, len(h))) for b in range(0, len(h), batch_size)]
    target_scores = torch.empty(len(h), device=device)
    for chunk in catalog.chunks():
        chunk = _on(chunk, device)
        for b, e in batches:
            column = _target_columns(targets[b:e], chunk)
            inside = column >= 0
            if inside.any():
                scores = _chunk_scores(model, h[b:e], gate[b:e], chunk)
                target_scores[b:e][inside] = scores[inside, column[inside]]
    rows, cols = history_entries(histories, device)
    masked = torch.ones(len(h), dtype=torch.long, device=device)
    unmasked = masked.clone()
    for chunk in catalog.chunks():
        chunk = _on(chunk, device)
        here = (cols >= chunk.start) & (cols < chunk.start + chunk.width)
        chunk_rows, chunk_cols = rows[here], cols[here] - chunk.start
        for b, e in batches:
            scores = _chunk_scores(model, h[b:e], gate[b:e], chunk)
            mine = (chunk_rows >= b) & (chunk_rows < e)
            exclude = torch.zeros_like(scores, dtype=torch.bool)
            exclude[chunk_rows[mine] - b, chunk_cols[mine]] = True
            column = _target_columns(targets[b:e], chunk)
            m, u = count_outranking(scores, target_scores[b:e], column, exclude)
            masked[b:e] += m
            unmasked[b:e] += u
    # Back to the callers' user order.
    ranks = torch.empty_like(masked), torch.empty_like(unmasked)
    ranks[0][order], ranks[1][order] = masked, unmasked
    return ranks


def _target_columns(targets: torch.Tensor, chunk: CatalogChunk) -> torch.Tensor:
    """Each target's column in this chunk, -1 where it lies in another."""
    column = targets - chunk.start
    return torch.where((column >= 0) & (column < chunk.width), column, -1)


def _chunk_scores(model, h, gate, chunk: CatalogChunk) -> torch.Tensor:
    scores = model.score(h, gate, chunk.experts, chunk.ids)
    if chunk.start == 0:
        scores[:, 0] = float("-inf")  # the padding item is no candidate
    return scores


def _on(chunk: CatalogChunk, device) -> CatalogChunk:
    if chunk.experts is None or chunk.experts.device == torch.device(device):
        return chunk
    return CatalogChunk(chunk.start, chunk.experts.to(device), chunk.ids)
