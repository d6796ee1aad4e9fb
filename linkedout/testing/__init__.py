"""Tiny stand-ins for tests, benchmarks and the fingerprint script: random-weight Qwen-VL
checkpoints saved and loaded through `from_pretrained` like a user's local copy
(`tiny_qwen`), deterministic feature rows (`factories`), and a local S3-compatible server
(`s3`, moto from the dev extra). Nothing here downloads."""
