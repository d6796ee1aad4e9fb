"""The one small interface every backbone implements.

A backbone turns one catalog item into model inputs and says which sequence positions belong to
which span (video, prompt, generated), and returns a batch's tapped layers pooled by the pool
function it is handed. How the states are captured is the backbone's own business: the
transformers backbones put forward hooks on their decoder blocks (`HookedBackbone`), the vLLM
one records them inside its engine. So no caller ever asks a backbone which kind it is.
Backbones never choose the pooling, store or decode.

Layer numbering (the manifest's `layers`): 0 is the embedding output that enters the first
decoder block (for Video LLMs: text embeddings with the vision features already merged in);
i >= 1 is the residual stream after decoder block i (1-based), before any final norm, as the
next block reads it (with what a model adds between blocks: Qwen3-VL's DeepStack features).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import TYPE_CHECKING, ClassVar, Literal, Protocol

import numpy as np
import torch
from torch import nn

from linkedout.extract.backbones.spans import Spans
from linkedout.extract.capture import LayerCapture

if TYPE_CHECKING:
    from linkedout.extract.backbones.qwen_pixels import PackSettings
    from linkedout.extract.pool import PoolingRecipe


@dataclass(frozen=True)
class ItemInput:
    """What the pipeline gives a backbone for one item."""

    text: str
    """The prompt with `{title}` already filled (video backbones) or the item text (text ones)."""
    frames: np.ndarray | None = None
    """uint8 RGB frames `[N, H, W, 3]` for video backbones."""
    frame_seconds: tuple[float, ...] = ()
    queries: tuple[str, ...] = ()
    """Every query's filled text, for `Packer.ask` (video backbones); `text` is unused there."""
    query_position: Literal["after", "before"] = "after"
    """Where each query sits in the chat turn: after the video (which all queries then share)
    or before it (the video tokens read the query)."""


@dataclass
class Asked:
    """One video with every query asked of it: each query's whole sequence, as `prepare`
    would make it for that query alone."""

    queries: tuple[Prepared, ...]
    shared: int | None
    """With the queries after the video: the length of the token prefix every query shares
    (the chat scaffold and the video, up to the first query token), computed once and
    continued by each query from its keys and values. None: each query is a pass of its own."""


@dataclass
class Prepared:
    """One item's model inputs (batch dimension 1) and where its spans sit."""

    inputs: dict[str, torch.Tensor]
    spans: Spans
    token_counts: dict[str, int] = field(default_factory=dict)


class Packer(Protocol):
    """The CPU half of a backbone: one item -> model inputs. Loads no weights, so decoding
    workers can pack while the model runs elsewhere."""

    settings: PackSettings | None
    """The pixel arithmetic of our own packing (frame sizes, token budget), checked against
    `--frames` before a run; None where the processor decides (the generic path) or for text."""

    def prepare(self, item: ItemInput) -> Prepared: ...

    def ask(self, item: ItemInput) -> Asked:
        """Every query of `item.queries`, the video packed once (video backbones)."""
        ...


Pool = Callable[[torch.Tensor, Spans], torch.Tensor]
"""One item's hidden states at one layer `[S, D]` and its spans -> the layer's `[T, D]` slots."""


@dataclass(frozen=True)
class PooledBatch:
    """What a backbone's forward of one batch gives back."""

    prepared: tuple[Prepared, ...]
    """Each item as it was forwarded: with `spans.generated` when tokens were generated."""
    tokens: torch.Tensor
    """`[B, L, T, D]` in the model's dtype: item, tapped layer (in the order asked), slot."""


@dataclass(frozen=True)
class AskedBatch:
    """What a backbone's forward of a batch of asked videos gives back, per video."""

    prepared: tuple[tuple[Prepared, ...], ...]
    """Each video's queries as forwarded (with `spans.generated` when tokens were generated)."""
    tokens: tuple[torch.Tensor, ...]
    """Each video's `[Q, L, T, D]`: query, tapped layer, slot. With a shared prefix the first
    V slots (the video's) are computed once and copied to every query: the same bits."""


class Backbone(Protocol):
    """What the extraction steps use of a backbone, whatever runs it."""

    kind: Literal["video-llm", "text"]
    backend: str
    """What runs the model: transformers or vllm (the manifest records it)."""
    versions: Mapping[str, str]
    """(package -> version) of the backend beyond transformers and torch, e.g. vllm."""
    model_id: str
    revision: str | None
    num_layers: int
    """Decoder blocks; valid layer indices are 0..num_layers."""
    hidden_size: int
    device: torch.device
    dtype: torch.dtype
    packer: Packer
    family: str | None
    """config.json's `model_type` of a video backbone (it decides pooling details such as the
    Qwen3 generation's timestamps); None for text backbones."""
    max_positions: int | None
    """The decoder's `max_position_embeddings` (None: no bound is checked)."""

    def prepare(self, item: ItemInput) -> Prepared:
        """`self.packer.prepare(item)`."""
        ...

    def refuse(self, prepared: Prepared, new_tokens: int) -> str | None:
        """Why this item cannot be forwarded (it then fails alone, not its batch), or None."""
        ...

    def pooled_states(
        self, batch: list[Prepared], layers: tuple[int, ...], pool: Pool, new_tokens: int
    ) -> PooledBatch:
        """Generate `new_tokens` greedily per item (when above 0), forward the batch and pool
        each item's states at each of `layers`."""
        ...

    def asked_states(
        self, batch: list[Asked], layers: tuple[int, ...], recipe: PoolingRecipe, new_tokens: int
    ) -> AskedBatch:
        """`pooled_states` of every query of every video; a shared prefix is computed once."""
        ...


class HookedBackbone(ABC):
    """A transformers backbone: one padded forward of the batch, with a `LayerCapture` hook on
    each tapped block pooling its layer as soon as it is computed."""

    backend: ClassVar[str] = "transformers"
    versions: ClassVar[Mapping[str, str]] = MappingProxyType({})

    packer: Packer
    family: str | None = None
    max_positions: int | None = None
    """The decoder's `max_position_embeddings` (None: no bound is checked)."""
    shrink_hint: ClassVar[str] = "lower --frames"
    """What makes an item fit, said when one is too long."""

    def prepare(self, item: ItemInput) -> Prepared:
        return self.packer.prepare(item)

    def refuse(self, prepared: Prepared, new_tokens: int) -> str | None:
        length = int(prepared.inputs["input_ids"].shape[1]) + new_tokens
        if self.max_positions is None or length <= self.max_positions:
            return None
        video = prepared.token_counts.get("video", 0)
        return (
            f"{length} tokens ({video} of them video) exceed the model's "
            f"{self.max_positions} positions: {self.shrink_hint}"
        )

    def pooled_states(
        self, batch: list[Prepared], layers: tuple[int, ...], pool: Pool, new_tokens: int
    ) -> PooledBatch:
        if new_tokens:
            batch = [self.generate(p, new_tokens) for p in batch]
        inputs, offsets = self.collate(batch)

        def reduce(hidden: torch.Tensor) -> torch.Tensor:
            return torch.stack(
                [
                    pool(hidden[i, off:], p.spans)
                    for i, (off, p) in enumerate(zip(offsets, batch, strict=True))
                ]
            )

        with LayerCapture(self.decoder_layers(), layers, reduce) as capture:
            states = capture.run(lambda: self.forward(inputs))
        return PooledBatch(tuple(batch), torch.stack([states[x] for x in layers], dim=1))

    def asked_states(
        self, batch: list[Asked], layers: tuple[int, ...], recipe: PoolingRecipe, new_tokens: int
    ) -> AskedBatch:
        if new_tokens:  # each query's own greedy continuation
            batch = [
                Asked(tuple(self.generate(p, new_tokens) for p in a.queries), a.shared)
                for a in batch
            ]
        if all(a.shared is None for a in batch):
            return full_passes(self, batch, layers, recipe)
        prepared = tuple(a.queries for a in batch)
        if self.batches_prefixes:
            return AskedBatch(prepared, tuple(self._continued(batch, layers, recipe)))
        # A recurrent layer would carry a shorter prefix's padding into its state: one at a time.
        return AskedBatch(
            prepared, tuple(t for a in batch for t in self._continued([a], layers, recipe))
        )

    def _continued(
        self, batch: list[Asked], layers: tuple[int, ...], recipe: PoolingRecipe
    ) -> list[torch.Tensor]:
        """`[Q, L, T, D]` of each video whose queries share its first `shared` tokens: one
        padded pass over the videos' prefixes (video slots pooled there, keys and values
        kept), then every query of every video in one batch, each continuing from a copy of
        its video's cache (padding positions masked out)."""
        firsts = [a.queries[0] for a in batch]
        shared = [a.shared for a in batch]
        longest = max(shared)
        prefixes = [
            Prepared(
                {k: v[:, :n] if k in self.per_token else v for k, v in p.inputs.items()}, p.spans
            )
            for p, n in zip(firsts, shared, strict=True)
        ]
        prefix, _ = self.collate(prefixes)
        positions = [[self.positions(p.inputs) for p in a.queries] for a in batch]
        axes = positions[0][0].shape[:-2]
        where = torch.zeros((*axes, len(batch), longest), dtype=torch.long)
        for i, (n, pos) in enumerate(zip(shared, positions, strict=True)):
            where[..., i, :n] = pos[0][..., 0, :n]
        cache = self.new_cache()

        def video(hidden: torch.Tensor) -> torch.Tensor:
            return torch.stack(
                [recipe.video_slots(hidden[i], p.spans) for i, p in enumerate(firsts)]
            )

        with LayerCapture(self.decoder_layers(), layers, video) as capture:
            video_states = capture.run(
                lambda: self.forward_cached(prefix, where.to(self.device), cache)
            )
        rows = [(i, q) for i, a in enumerate(batch) for q in range(len(a.queries))]
        tails = [batch[i].queries[q].inputs["input_ids"][0, shared[i] :] for i, q in rows]
        width = max(len(t) for t in tails)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), longest + width), dtype=torch.long)
        after = torch.zeros((*axes, len(rows), width), dtype=torch.long)
        for r, ((i, q), tail) in enumerate(zip(rows, tails, strict=True)):
            ids[r, : len(tail)] = tail
            mask[r, : shared[i]] = 1  # its own video's prefix; the padding after it is masked
            mask[r, longest : longest + len(tail)] = 1
            after[..., r, : len(tail)] = positions[i][q][..., 0, shared[i] :]
        # Every query continues from its own copy of its video's keys and values.
        owners = torch.tensor([i for i, _ in rows], device=self.device)  # each row's video
        cache.reorder_cache(owners)
        spans = [_shifted(batch[i].queries[q].spans, -shared[i]) for i, q in rows]

        def text(hidden: torch.Tensor) -> torch.Tensor:
            return torch.stack([recipe.text_slots(hidden[r], spans[r]) for r in range(len(rows))])

        inputs = {"input_ids": ids.to(self.device), "attention_mask": mask.to(self.device)}
        with LayerCapture(self.decoder_layers(), layers, text) as capture:
            text_states = capture.run(
                lambda: self.forward_cached(inputs, after.to(self.device), cache, text_only=True)
            )
        video = torch.stack([video_states[x] for x in layers], dim=1)  # [B, L, V, D]
        text = torch.stack([text_states[x] for x in layers], dim=1)  # [rows, L, T - V, D]
        tokens = torch.cat(
            [video[owners.to(video.device)], text], dim=2
        )  # every query its video's slots
        return list(tokens.split([len(a.queries) for a in batch]))

    # What a backbone that shares prefixes implements (the packer sets `Asked.shared` only
    # for those).
    per_token: ClassVar[tuple[str, ...]] = ("input_ids", "attention_mask")
    """Inputs with one entry per token (cut to the prefix); the rest go whole to the prefix."""
    pad_id: int = 0
    batches_prefixes: bool = True
    """Whether several videos' prefixes may share one padded forward: not where a layer is
    recurrent (linear attention), whose state would read the padding."""

    def positions(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The position ids `[..., 1, S]` a forward of `inputs` (one item) would use."""
        raise NotImplementedError(f"{type(self).__name__} does not continue shared prefixes")

    def new_cache(self) -> object:
        """An empty key/value cache for `forward_cached`."""
        raise NotImplementedError(f"{type(self).__name__} does not continue shared prefixes")

    def forward_cached(
        self, inputs: dict[str, torch.Tensor], positions: torch.Tensor, cache, text_only=False
    ) -> None:
        """A forward at these positions that appends to `cache`; `text_only`: a continuation
        of text tokens after what the cache holds."""
        raise NotImplementedError(f"{type(self).__name__} does not continue shared prefixes")

    @abstractmethod
    def decoder_layers(self) -> nn.ModuleList:
        """The decoder blocks, in order (hooks go on these)."""

    @abstractmethod
    def collate(self, batch: list[Prepared]) -> tuple[dict[str, torch.Tensor], list[int]]:
        """Pad a batch into one forward's inputs; returns them and each item's offset of its
        first token in the padded sequence (positions in `Spans` shift by it)."""

    @abstractmethod
    def forward(self, inputs: dict[str, torch.Tensor]) -> None:
        """Run the model up to the last decoder block (no LM head): hooks collect the states."""

    @abstractmethod
    def generate(self, prepared: Prepared, new_tokens: int) -> Prepared:
        """Greedily generate `new_tokens` and return inputs covering prompt + generated tokens,
        with `spans.generated` set."""


def full_passes(
    backbone: Backbone,
    batch: list[Asked],
    layers: tuple[int, ...],
    recipe: PoolingRecipe,
    new_tokens: int = 0,
) -> AskedBatch:
    """Every query of every video as a sequence of its own, all in one `pooled_states`."""
    pooled = backbone.pooled_states(
        [p for a in batch for p in a.queries], layers, recipe.pool, new_tokens
    )
    starts = [0]
    for a in batch:
        starts.append(starts[-1] + len(a.queries))
    parts = list(zip(starts, starts[1:]))
    return AskedBatch(
        tuple(pooled.prepared[i:j] for i, j in parts), tuple(pooled.tokens[i:j] for i, j in parts)
    )


def _shifted(spans: Spans, offset: int) -> Spans:
    """The text spans moved by `offset` positions (into a continuation's own positions)."""

    def move(part: slice | None) -> slice | None:
        return None if part is None else slice(part.start + offset, part.stop + offset)

    return replace(spans, prompt=move(spans.prompt), generated=move(spans.generated))
