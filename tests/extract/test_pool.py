from __future__ import annotations

import pytest
import torch

from linkedout.errors import LinkedOutError
from linkedout.extract.backbones.base import Spans
from linkedout.extract.pool import PoolingRecipe


def test_video_recipe_allocates_slots_and_describes_them():
    r = PoolingRecipe.make("video-llm", 16)
    assert (r.video_bins, r.prompt_slots, r.generated_slots) == ((3, 2, 2), 4, 0)
    assert "[0:12] video tokens" in r.describe() and "[12] prompt mean" in r.describe()
    r = PoolingRecipe.make("video-llm", 16, new_tokens=3)
    assert (r.video_bins, r.prompt_slots, r.generated_slots) == ((3, 2, 2), 2, 2)
    assert "[14] generated mean; [15] generated last token" in r.describe()
    with pytest.raises(LinkedOutError, match="too few"):
        PoolingRecipe.make("video-llm", 5)


def test_video_pooling_by_hand():
    # 2 prompt tokens, then a video grid t=2, h=2, w=2 (8 tokens), then 3 more prompt tokens.
    d = 3
    hidden = torch.zeros(13, d)
    video = torch.arange(8, dtype=torch.float32).reshape(8, 1).repeat(1, d)  # value = position
    hidden[2:10] = video
    hidden[10:13] = torch.tensor([[1.0], [2.0], [6.0]]).repeat(1, d)
    spans = Spans(prompt=slice(10, 13), video=slice(2, 10), video_grid=(2, 2, 2))
    recipe = PoolingRecipe("video-llm", 7, (1, 2, 2), 3, 0)
    out = recipe.pool(hidden, spans)
    assert out.shape == (7, d)
    # bins (1, 2, 2): each spatial cell averaged over the 2 time steps: (0+4)/2, (1+5)/2, ...
    assert out[:4, 0].tolist() == [2.0, 3.0, 4.0, 5.0]
    assert out[4, 0] == 3.0  # prompt mean
    assert out[5, 0] == 6.0  # prompt last token
    assert out[6, 0] == 3.0  # one chunk = the mean


def test_text_pooling_by_hand():
    hidden = torch.tensor([[1.0], [2.0], [3.0], [10.0]])
    out = PoolingRecipe.make("text", 5).pool(hidden, Spans(prompt=slice(0, 4)))
    assert out[:, 0].tolist() == [4.0, 1.0, 10.0, 1.5, 6.5]  # mean, first, last, 2 chunk means


def test_generated_tokens_are_pooled_when_the_recipe_has_slots():
    hidden = torch.arange(20, dtype=torch.float32).reshape(20, 1)
    spans = Spans(
        prompt=slice(0, 2), video=slice(2, 18), video_grid=(4, 2, 2), generated=slice(18, 20)
    )
    out = PoolingRecipe.make("video-llm", 8, new_tokens=2).pool(hidden, spans)
    assert out.shape == (8, 1)
    assert out[-2:, 0].tolist() == [18.5, 19.0]
