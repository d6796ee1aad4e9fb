"""The vLLM backend for Qwen2-VL, Qwen2.5-VL and Qwen3-VL: the same items, spans and per-layer
states as the transformers backbone, computed by a vLLM engine (paged KV cache, continuous
batching).

Packing is shared with the transformers backend: our `QwenVLPacker` tokenizes the prompt and
resizes the frames, and vLLM receives those frames already at their packed size (its own
processor then leaves them as they are) plus the prompt with one video placeholder, which it
expands to the same token ids (checked per item). Per-layer states are read by forward hooks on
the decoder blocks, installed on the in-process engine's model: each step's tokens of all running
requests arrive concatenated, and the model runner's request order and query offsets split them
back per request. The residual stream after block i is vLLM's `hidden + residual` as block
i + 1 reads it (a pre-hook), so Qwen3-VL's DeepStack additions between blocks are in it.

Hooks need an eager model (no CUDA graphs, no torch.compile: a compiled graph never calls them)
and every token computed (prefix caching off: a cached prefix is never recomputed). A batch's
states are held, on the CPU in the model's dtype, until all its requests finish: for a 7B model,
8 tapped layers of a 2,100-token video in bf16 are about 120 MB, so `--batch-size` bounds the
memory this takes.
"""

from __future__ import annotations

import os
import threading
from collections import defaultdict
from dataclasses import replace
from typing import TYPE_CHECKING, Literal

import torch

from linkedout.errors import LinkedOutError, SettingError
from linkedout.extract.backbones.base import (
    Asked,
    AskedBatch,
    ItemInput,
    Pool,
    PooledBatch,
    Prepared,
    full_passes,
)
from linkedout.extract.backbones.checkpoint_files import revision as checkpoint_revision
from linkedout.extract.backbones.qwen_pixels import resize_frames
from linkedout.extract.backbones.qwen_vl import SUPPORTED, QwenVLPacker

if TYPE_CHECKING:
    from linkedout.extract.pool import PoolingRecipe

INSTALL_HINT = (
    "needs vLLM: pip install 'linkedout[vllm]' on a GPU machine, or build the CPU environment "
    "with `make vllm-env` (see README, vLLM backend)"
)


def import_vllm():
    # The engine runs in this process, so the hooks' records are plain Python objects here.
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")  # GiB, on CPU-only machines
    try:
        import vllm
    except ImportError as e:
        raise SettingError("backend", "vllm", f"{INSTALL_HINT} ({e})") from None
    return vllm


class VllmQwenPacker:
    """`QwenVLPacker`, plus the resized uint8 frames vLLM is given (instead of pixel values)."""

    def __init__(self, packer: QwenVLPacker):
        self.packer = packer
        self.family = packer.family
        self.settings = packer.settings

    def ask(self, item: ItemInput) -> Asked:
        """Each query a request of its own, the whole sequence: vLLM's prefix cache (off here)
        would skip the shared video tokens whose layers are captured, so nothing is shared."""
        video = self.packer.pack(item)
        return Asked(
            tuple(
                self._for_vllm(self.packer.sequence(text, video, item.query_position), item)
                for text in item.queries
            ),
            None,
        )

    def prepare(self, item: ItemInput) -> Prepared:
        return self._for_vllm(self.packer.prepare(item), item)

    def _for_vllm(self, prepared: Prepared, item: ItemInput) -> Prepared:
        """A packed sequence as vLLM takes it: one video placeholder and the resized frames."""
        grid = prepared.inputs["video_grid_thw"][0].tolist()
        patch = self.settings.patch_size
        frames = resize_frames(item.frames, grid[1] * patch, grid[2] * patch)
        inputs = {
            "input_ids": prepared.inputs["input_ids"],
            "video_frames": torch.from_numpy(frames),
        }
        if "second_per_grid_ts" in prepared.inputs:
            inputs["second_per_grid_ts"] = prepared.inputs["second_per_grid_ts"]
        ids = prepared.inputs["input_ids"][0].tolist()
        start, stop = prepared.spans.video.start, prepared.spans.video.stop
        if SUPPORTED[self.family].timestamps:  # vLLM writes the timestamps from these
            inputs["frame_seconds"] = torch.tensor(item.frame_seconds, dtype=torch.float64)
            # The expansion runs from the first patch's timestamp to the last patch's end.
            first = self.packer.patch_seconds(item.frame_seconds, len(item.frames))[0]
            start -= 1 + len(self.packer.timestamp_ids(first))
            stop += 1
        # One video placeholder where the expansion was: vLLM expands it again.
        placeholder = ids[:start] + [self.packer.video_token_id] + ids[stop:]
        inputs["placeholder_prompt"] = torch.tensor([placeholder])
        return Prepared(inputs, prepared.spans, prepared.token_counts)


class _Records:
    """Per request id: layer -> [(first position, states [n, D])] from each model step."""

    def __init__(self):
        self.by_request: dict = defaultdict(lambda: defaultdict(list))
        self.lock = threading.Lock()


class VllmQwenBackbone:
    """A Qwen-VL checkpoint served by an in-process vLLM engine (a `Backbone`)."""

    kind: Literal["video-llm", "text"] = "video-llm"
    backend = "vllm"
    max_positions: int | None = None  # vLLM checks its own max_model_len

    def __init__(
        self,
        llm,
        packer: VllmQwenPacker,
        model_id: str,
        revision: str | None,
        dtype: torch.dtype,
        stop_ids: set[int],
    ):
        import vllm

        self.llm = llm
        self.packer = packer
        self.model_id = model_id
        self.revision = revision
        self.dtype = dtype
        config = llm.llm_engine.model_config.hf_config
        text = getattr(config, "text_config", config)
        self.num_layers: int = text.num_hidden_layers
        self.hidden_size: int = text.hidden_size
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.versions = {"vllm": vllm.__version__}
        self._records = _Records()
        self._layers: tuple[int, ...] | None = None
        self._stop_ids = stop_ids
        self.max_model_len: int = llm.llm_engine.model_config.max_model_len

    @classmethod
    def load(
        cls,
        model: str,
        dtype: torch.dtype,
        max_pixels: int | None = None,
        *,
        model_id: str | None = None,
        revision: str | None = None,
        max_model_len: int = 32768,
        load_format: str = "auto",
    ) -> VllmQwenBackbone:
        """`load_format` dummy gives random weights in the checkpoint's shape (benchmarks)."""
        vllm = import_vllm()
        from transformers import GenerationConfig, PretrainedConfig

        packer = VllmQwenPacker(QwenVLPacker.load(model, max_pixels=max_pixels))
        config = PretrainedConfig.get_config_dict(model)[0]
        text = config.get("text_config", config)
        limit = int(text.get("max_position_embeddings", max_model_len))
        llm = vllm.LLM(
            model=model,
            dtype=str(dtype).removeprefix("torch."),
            enforce_eager=True,  # hooks do not fire inside CUDA graphs or compiled graphs
            enable_prefix_caching=False,  # every token's states must be computed
            limit_mm_per_prompt={"video": 1, "image": 0},
            max_model_len=min(limit, max_model_len),
            seed=0,
            load_format=load_format,
        )
        # transformers' generate stops after the generation config's end tokens; so do we.
        eos = GenerationConfig.from_pretrained(model).eos_token_id
        stop_ids = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
        return cls(
            llm, packer, model_id or model, revision or checkpoint_revision(model), dtype, stop_ids
        )

    @property
    def family(self) -> str:
        return self.packer.family

    def prepare(self, item: ItemInput) -> Prepared:
        return self.packer.prepare(item)

    # ------------------------------------------------------------------ states
    def asked_states(
        self, batch: list[Asked], layers: tuple[int, ...], recipe: PoolingRecipe, new_tokens: int
    ) -> AskedBatch:
        return full_passes(self, batch, layers, recipe, new_tokens)

    def pooled_states(
        self, batch: list[Prepared], layers: tuple[int, ...], pool: Pool, new_tokens: int
    ) -> PooledBatch:
        """The batch's requests in one engine call (generation included), then each item's
        states pooled as the hooked backbones pool theirs."""
        results = self.states(batch, layers, new_tokens)
        per_layer = {
            x: torch.stack([pool(states[x], prepared.spans) for prepared, states in results])
            for x in layers
        }
        return PooledBatch(
            tuple(prepared for prepared, _ in results),
            torch.stack([per_layer[x] for x in layers], dim=1),
        )

    def states(
        self, batch: list[Prepared], layers: tuple[int, ...], new_tokens: int
    ) -> list[tuple[Prepared, dict[int, torch.Tensor]]]:
        """Run every item of `batch` through the engine at once (vLLM schedules them), with
        `new_tokens` greedy tokens each; return each item (spans extended by what it generated)
        with its states `[S, D]` at each tapped layer."""
        from vllm import SamplingParams

        self._install(layers)
        # The states of a generated token are computed when it is fed back, so one token more
        # is drawn than kept; end-of-turn does not stop the request for the same reason, and the
        # kept tokens are cut after it, as transformers' generate stops there.
        params = SamplingParams(
            max_tokens=new_tokens + 1, temperature=0.0, ignore_eos=new_tokens > 0
        )
        requests = [self._request(p) for p in batch]
        self._records.by_request.clear()
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        results = []
        for prepared, output in zip(batch, outputs, strict=True):
            ids = prepared.inputs["input_ids"][0].tolist()
            if list(output.prompt_token_ids) != ids:
                raise LinkedOutError(
                    f"vLLM packed a video into {len(output.prompt_token_ids)} tokens where the "
                    f"packer made {len(ids)}: pass --max-pixels within the checkpoint's bounds"
                )
            generated = self._kept(list(output.outputs[0].token_ids)[:new_tokens])
            prepared = _with_generated(prepared, generated)
            length = len(ids) + len(generated)
            records = self._take(output.request_id)
            results.append((prepared, {x: _assemble(records[x], length) for x in layers}))
        return results

    def _kept(self, tokens: list[int]) -> list[int]:
        for i, token in enumerate(tokens):
            if token in self._stop_ids:
                return tokens[: i + 1]
        return tokens

    def _request(self, prepared: Prepared) -> dict:
        frames = prepared.inputs["video_frames"].numpy()
        data: object = frames
        if "second_per_grid_ts" in prepared.inputs:
            # Qwen2.5-VL spaces temporal positions by the seconds per temporal patch, which
            # vLLM's processor derives from the video's frame rate.
            seconds = float(prepared.inputs["second_per_grid_ts"][0])
            fps = self.packer.settings.temporal_patch_size / seconds if seconds > 0 else 2.0
            data = (frames, _metadata(fps, list(range(len(frames))), len(frames) / fps))
        if "frame_seconds" in prepared.inputs:
            # Qwen3 writes `<t seconds>` before each temporal patch, t the mean of its frames'
            # indices / fps: with fps 1 and the frames' own seconds as indices, vLLM's
            # processor computes the times our packer wrote (the expanded ids are compared).
            seconds = prepared.inputs["frame_seconds"].tolist()
            data = (frames, _metadata(1.0, seconds, seconds[-1]))
        prompt = prepared.inputs["placeholder_prompt"][0].tolist()
        return {"prompt_token_ids": prompt, "multi_modal_data": {"video": data}}

    def _take(self, request_id: str) -> dict:
        # The engine suffixes the ids LLM.generate gives its requests.
        with self._records.lock:
            for key in list(self._records.by_request):
                if key == request_id or key.split("-", 1)[0] == request_id:
                    return self._records.by_request.pop(key)
        raise LinkedOutError(f"vLLM computed no states for request {request_id}")

    def refuse(self, prepared: Prepared, new_tokens: int) -> str | None:
        """Why the engine would reject this item (it fails alone, not its batch), or None."""
        need = prepared.inputs["input_ids"].shape[1] + new_tokens + 1
        if need > self.max_model_len:
            return (
                f"{need} tokens exceed the vLLM engine's {self.max_model_len}: "
                "shorten the prompt or title, or lower --frames or --max-pixels"
            )
        return None

    def _install(self, layers: tuple[int, ...]) -> None:
        if self._layers == layers:
            return
        records = self._records

        def install(worker) -> int:
            runner = worker.model_runner
            blocks = runner.model.language_model.model.layers
            for handle in getattr(worker, "_linkedout_hooks", []):  # an earlier set of layers
                handle.remove()

            def record(layer: int, states: torch.Tensor) -> None:
                batch = runner.input_batch
                n = batch.num_reqs
                starts = runner.query_start_loc.np[: n + 1].tolist()
                computed = batch.num_computed_tokens_cpu[:n].tolist()
                with records.lock:
                    for r, request in enumerate(batch.req_ids[:n]):
                        piece = states[starts[r] : starts[r + 1]].detach().to("cpu", copy=True)
                        records.by_request[request][layer].append((int(computed[r]), piece))

            def before(layer: int):
                # What block `layer` reads, as LayerCapture reads it: Qwen3-VL's DeepStack
                # features are added between blocks, outside them.
                def hook(module, args, kwargs):
                    hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[1]
                    residual = kwargs["residual"] if "residual" in kwargs else args[2]
                    record(layer, hidden if residual is None else hidden + residual)

                return hook

            def after(layer: int):
                def hook(module, args, output):
                    hidden, residual = output
                    record(layer, hidden if residual is None else hidden + residual)

                return hook

            worker._linkedout_hooks = [
                blocks[layer].register_forward_pre_hook(before(layer), with_kwargs=True)
                if layer < len(blocks)
                else blocks[layer - 1].register_forward_hook(after(layer))
                for layer in layers
            ]
            return len(layers)

        self.llm.collective_rpc(install)
        self._layers = layers


def _metadata(fps: float, indices: list, duration: float) -> dict:
    """Video metadata for frames we sampled ourselves: vLLM must not sample them again."""
    return {
        "fps": fps,
        "duration": duration,
        "total_num_frames": len(indices),
        "frames_indices": indices,
        "video_backend": "linkedout",
        "do_sample_frames": False,
    }


def _assemble(pieces: list[tuple[int, torch.Tensor]], length: int) -> torch.Tensor:
    """A request's steps, in position order, as one `[length, D]` tensor."""
    pieces = sorted(pieces, key=lambda piece: piece[0])
    states = torch.cat([piece for _, piece in pieces])
    if len(states) < length:
        raise LinkedOutError(f"vLLM computed {len(states)} of {length} positions")
    return states[:length]


def _with_generated(prepared: Prepared, generated: list[int]) -> Prepared:
    if not generated:
        return prepared
    length = prepared.inputs["input_ids"].shape[1]
    ids = torch.cat([prepared.inputs["input_ids"], torch.tensor([generated])], dim=1)
    spans = replace(prepared.spans, generated=slice(length, length + len(generated)))
    inputs = {**prepared.inputs, "input_ids": ids}
    return Prepared(inputs, spans, {**prepared.token_counts, "generated": len(generated)})
