"""A Video LLM checkpoint's processor files, read with the precedence transformers'
`AutoProcessor.from_pretrained` uses, so one settings dict comes out of every layout:

- as published on the Hub: `video_preprocessor_config.json` and/or `preprocessor_config.json`,
  the chat template in `chat_template.json` or the tokenizer's config;
- as transformers 5's `Processor.save_pretrained` writes it: one `processor_config.json` with
  nested `image_processor` / `video_processor` sections, the template in `chat_template.jinja`.

Packers read the files, never a processor object: transformers' video processors need
torchvision, which CPU machines here cannot import.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from transformers.utils.hub import cached_file, extract_commit_hash

from linkedout.errors import LinkedOutError

PROCESSOR_CONFIG = "processor_config.json"
VIDEO_CONFIG_FILES = ("video_preprocessor_config.json", "preprocessor_config.json")


def _file(model: str, name: str) -> Path | None:
    path = cached_file(model, name, _raise_exceptions_for_missing_entries=False)
    return Path(path) if path is not None else None


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise LinkedOutError(
            f"{path} is not valid JSON ({error}): re-save the checkpoint"
        ) from None


def video_processor_config(model: str) -> tuple[dict, str]:
    """(settings, the file they came from) of the checkpoint's video processor.

    `BaseVideoProcessor.get_video_processor_dict`'s order: the `video_processor` section of
    processor_config.json, else video_preprocessor_config.json, else preprocessor_config.json
    (the image processor's, which older Qwen checkpoints share with video)."""
    nested = _file(model, PROCESSOR_CONFIG)
    if nested is not None:
        section = _json(nested).get("video_processor")
        if section is not None:
            return section, f"{PROCESSOR_CONFIG} (video_processor)"
    for name in VIDEO_CONFIG_FILES:
        path = _file(model, name)
        if path is not None:
            return _json(path), name
    raise LinkedOutError(
        f"{model} has no video processor settings ({PROCESSOR_CONFIG} with a video_processor "
        f"section, {' or '.join(VIDEO_CONFIG_FILES)}): is it a complete checkpoint?"
    )


def processor_chat_template(model: str) -> str | None:
    """The processor's chat template, as `ProcessorMixin.from_pretrained` resolves it: a
    `chat_template` key of processor_config.json, else the legacy chat_template.json, else
    chat_template.jinja; None when the checkpoint has none of them."""
    nested = _file(model, PROCESSOR_CONFIG)
    if nested is not None and (template := _json(nested).get("chat_template")) is not None:
        return _default_template(template, model)
    legacy = _file(model, "chat_template.json")
    if legacy is not None:
        return _default_template(_json(legacy).get("chat_template"), model)
    raw = _file(model, "chat_template.jinja")
    return raw.read_text(encoding="utf-8") if raw is not None else None


def _default_template(template: str | dict | list | None, model: str) -> str:
    # Several named templates: the processor renders the one named "default".
    if isinstance(template, list):  # the tokenizer-config form: [{"name": ..., "template": ...}]
        template = {entry["name"]: entry["template"] for entry in template}
    if isinstance(template, dict):
        template = template.get("default")
    if not isinstance(template, str):
        raise LinkedOutError(f"{model}'s chat template has no default template: re-save it")
    return template


def revision(model: str) -> str:
    """The Hub commit the files came from, else (a plain folder) the sha256 of config.json."""
    config_path = cached_file(model, "config.json")
    commit = extract_commit_hash(config_path, None)
    return commit or hashlib.sha256(Path(config_path).read_bytes()).hexdigest()
