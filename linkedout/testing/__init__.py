"""Tiny stand-ins for tests, benchmarks and the fingerprint script: random-weight Qwen-VL
checkpoints saved and loaded through `from_pretrained` like a user's local copy
(`tiny_qwen`), and deterministic feature rows (`factories`). Nothing here downloads."""
