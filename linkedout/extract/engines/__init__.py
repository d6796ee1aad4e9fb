"""Where an extraction's per-item steps run: `local` (this process) or `ray` (a cluster)."""
