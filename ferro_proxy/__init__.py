"""ferro-proxy: an OpenAI-compatible AI gateway sidecar."""

__version__ = "0.1.0"
