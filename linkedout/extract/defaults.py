"""Defaults a user sees in `linkedout extract --help` (kept free of heavy imports)."""

DEFAULT_VIDEO_MODEL = "Qwen/Qwen2.5-VL-3B-Instruct"
DEFAULT_PROMPT = "Title: {title}\nWhat does this video show, and why would people want to watch it?"
