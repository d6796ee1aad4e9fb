"""Forward hooks on the tapped decoder blocks only, pooling each layer as soon as it is computed.

Holding every layer's full hidden states would cost layers x sequence x hidden memory; a hook
reduces its layer to `[B, T, D]` on the spot. When the deepest tapped layer is done the forward
is cut short: blocks nobody reads are never computed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn


class _Done(Exception):
    """Raised by the deepest hook to stop the forward early."""


class LayerCapture:
    """`with LayerCapture(blocks, layers, reduce) as cap: cap.run(forward)` -> `cap.states`.

    `reduce(hidden [B, S, D]) -> tensor` is applied to each tapped layer; `states[layer]` holds
    its result. Layer 0 is the input of the first block; layer i >= 1 is the residual stream
    after block i, read as the input of block i + 1 (the last block's output for the deepest).

    Reading what the next block reads matters where a model changes the stream between blocks:
    Qwen3-VL adds vision features (DeepStack) to the video positions after each of its first
    blocks, so block i's own output lacks what block i + 1 is given. Elsewhere the two are the
    same tensor.
    """

    def __init__(
        self,
        blocks: nn.ModuleList,
        layers: Sequence[int],
        reduce: Callable[[torch.Tensor], torch.Tensor],
    ):
        self.blocks = blocks
        self.layers = list(layers)
        self.reduce = reduce
        self.states: dict[int, torch.Tensor] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._deepest = max(self.layers)

    def __enter__(self) -> LayerCapture:
        for layer in self.layers:
            if layer < len(self.blocks):
                handle = self.blocks[layer].register_forward_pre_hook(
                    self._pre_hook_for(layer), with_kwargs=True
                )
            else:
                handle = self.blocks[layer - 1].register_forward_hook(self._hook_for(layer))
            self._handles.append(handle)
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def run(self, forward: Callable[[], object]) -> dict[int, torch.Tensor]:
        self.states = {}
        try:
            forward()
        except _Done:
            pass
        missing = [x for x in self.layers if x not in self.states]
        if missing:
            raise RuntimeError(f"the forward never reached layers {missing}")
        return self.states

    def _store(self, layer: int, hidden: torch.Tensor) -> None:
        self.states[layer] = self.reduce(hidden)
        if layer == self._deepest and len(self.states) == len(self.layers):
            raise _Done

    def _pre_hook_for(self, layer: int):
        def hook(module, args, kwargs):
            self._store(layer, args[0] if args else kwargs["hidden_states"])

        return hook

    def _hook_for(self, layer: int):
        def hook(module, args, output):
            self._store(layer, output[0] if isinstance(output, tuple) else output)

        return hook
