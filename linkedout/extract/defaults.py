"""Defaults a user sees in `linkedout extract --help` (kept free of heavy imports)."""

# Why this model (licence, size, generation): the README's "Default model" paragraph.
DEFAULT_VIDEO_MODEL = "Qwen/Qwen3-VL-2B-Instruct"
DEFAULT_PROMPT = "Title: {title}\nWhat does this video show, and why would people want to watch it?"
