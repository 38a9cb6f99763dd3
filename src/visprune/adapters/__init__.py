"""Model adapters, one per ``config.model_type``. Importing registers them."""

from . import (  # noqa: F401
    gemma3,
    internvl,
    llava,
    llava_next,
    llava_next_video,
    llava_onevision,
    qwen2_vl,
    qwen3_vl,
)
from .base import Adapter, Layout, Selection

__all__ = ["Adapter", "Layout", "Selection"]
