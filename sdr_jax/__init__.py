"""Scalable Dynamic Routing (SDR) for task-customised self-supervised pre-training."""

__version__ = "0.1.0"
