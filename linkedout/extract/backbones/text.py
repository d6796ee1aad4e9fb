"""Any transformers `AutoModel` over the item's text alone (titles, captions, descriptions)."""

from __future__ import annotations

import torch
from torch import nn
from transformers import AutoModel, AutoTokenizer

from linkedout.errors import LinkedOutError, SettingError
from linkedout.extract.backbones.base import HookedBackbone, ItemInput, Prepared, Spans


class TextPacker:
    """The CPU half: text -> token ids (the tokenizer only, never the weights)."""

    settings = None  # no pixels to size

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.max_length = min(int(getattr(tokenizer, "model_max_length", 512) or 512), 4096)

    @classmethod
    def load(cls, path: str) -> TextPacker:
        return cls(AutoTokenizer.from_pretrained(path))

    def prepare(self, item: ItemInput) -> Prepared:
        if not item.text.strip():
            raise LinkedOutError("the text is empty")
        encoded = self.tokenizer(
            item.text, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        n = int(encoded["input_ids"].shape[1])
        return Prepared(dict(encoded), Spans(prompt=slice(0, n)), {"prompt": n})


class TextBackbone(HookedBackbone):
    kind = "text"

    def __init__(self, model_id: str, revision: str | None, model, tokenizer, device, dtype):
        self.model_id = model_id
        self.revision = revision
        self.model = model
        self.packer = TextPacker(tokenizer)
        self.tokenizer = tokenizer
        self.device = device
        self.dtype = dtype
        self._blocks = _find_blocks(model)
        self.num_layers = len(self._blocks)
        self.hidden_size = int(model.config.hidden_size)

    @classmethod
    def load(
        cls,
        path: str,
        model_id: str,
        revision: str | None,
        device: torch.device,
        dtype: torch.dtype,
    ) -> TextBackbone:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModel.from_pretrained(path, dtype=dtype).to(device).eval()
        return cls(model_id, revision, model, tokenizer, device, dtype)

    def decoder_layers(self) -> nn.ModuleList:
        return self._blocks

    def collate(self, batch: list[Prepared]) -> tuple[dict[str, torch.Tensor], list[int]]:
        longest = max(p.inputs["input_ids"].shape[1] for p in batch)
        pad = self.tokenizer.pad_token_id or 0
        out: dict[str, torch.Tensor] = {}
        for key in batch[0].inputs:
            fill = pad if key == "input_ids" else 0
            out[key] = torch.cat(
                [
                    nn.functional.pad(
                        p.inputs[key], (0, longest - p.inputs[key].shape[1]), value=fill
                    )
                    for p in batch
                ]
            )
        return out, [0] * len(batch)  # right padding: each item starts at position 0

    @torch.inference_mode()
    def forward(self, inputs: dict[str, torch.Tensor]) -> None:
        self.model(**{k: v.to(self.device) for k, v in inputs.items()})

    def generate(self, prepared: Prepared, new_tokens: int) -> Prepared:
        raise SettingError(
            "new_tokens",
            new_tokens,
            f"needs a generative Video LLM; {self.model_id} is a text encoder",
        )


def _find_blocks(model: nn.Module) -> nn.ModuleList:
    """The stack of transformer blocks: the ModuleList as long as config.num_hidden_layers."""
    n = getattr(model.config, "num_hidden_layers", None)
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) == n:
            return module
    raise LinkedOutError(
        f"cannot find the {n} transformer blocks of {type(model).__name__}: "
        "this architecture is not supported as a text backbone"
    )
