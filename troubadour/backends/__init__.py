"""Model backends: load a checkpoint and expose the pieces the engine's decode loop drives."""

from .base import Backend, ModelInfo, pick_device
from .transformers_backend import TransformersBackend, describe_model, load_backend

__all__ = ["Backend", "ModelInfo", "TransformersBackend", "describe_model", "load_backend", "pick_device"]
