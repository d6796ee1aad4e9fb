"""The Video LLM families with a packer of their own (the Qwen adapter), by config.json
`model_type`. Kept free of transformers' model code: every extraction reads this table, even
where it only checks settings or fails on bad input.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedModel


@dataclass(frozen=True)
class Family:
    name: str
    model_class: str
    """The transformers class `from_pretrained` loads the checkpoint with."""
    timestamps: bool = False
    """Text timestamps and vision markers before each temporal patch (the Qwen3 generation)."""
    seconds_per_grid: bool = False
    """Temporal positions spaced by `second_per_grid_ts` (Qwen2.5-VL)."""
    vllm: str | None = None
    """Why `--backend vllm` does not serve it, or None where its rows are tested equal to the
    transformers backend's (`make test-vllm`)."""

    def load_class(self) -> type[PreTrainedModel]:
        import transformers

        return getattr(transformers, self.model_class)


SUPPORTED: dict[str, Family] = {
    "qwen2_vl": Family("Qwen2-VL", "Qwen2VLForConditionalGeneration"),
    "qwen2_5_vl": Family("Qwen2.5-VL", "Qwen2_5_VLForConditionalGeneration", seconds_per_grid=True),
    "qwen3_vl": Family("Qwen3-VL", "Qwen3VLForConditionalGeneration", timestamps=True),
    "qwen3_vl_moe": Family(
        "Qwen3-VL-MoE",
        "Qwen3VLMoeForConditionalGeneration",
        timestamps=True,
        vllm="the pinned vLLM (0.32) cannot load it beside the transformers it pins (5.19: "
        "its config lacks norm_topk_prob), so its rows are untested",
    ),
    "qwen3_5": Family(
        "Qwen3.5",
        "Qwen3_5ForConditionalGeneration",
        timestamps=True,
        vllm="the pinned vLLM (0.32) runs its linear-attention blocks in bf16 only on CPUs, so "
        "its rows are untested against transformers in fp32",
    ),
    "qwen3_5_moe": Family(
        "Qwen3.5-MoE",
        "Qwen3_5MoeForConditionalGeneration",
        timestamps=True,
        vllm="untested on the pinned vLLM (0.32), like Qwen3.5",
    ),
}
"""config.json `model_type` -> its family."""


def supported_families() -> str:
    return ", ".join(f"{family.name} ({key})" for key, family in SUPPORTED.items())
