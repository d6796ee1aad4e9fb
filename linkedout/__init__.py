"""LinkedOut: video recommendation from multi-layer Video-LLM knowledge."""

__version__ = "0.1.0"
