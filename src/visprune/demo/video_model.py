"""Config, tokenizer and save/load helpers of the demo video model (LLaVA-NeXT-Video, offline).

A stock ``LlavaNextVideoForConditionalGeneration``: a 1-layer CLIP tower on ``FRAME_SIZE`` px
frames (features from its embedding output: one patch per token), spatial pooling of stride 1
(every patch of every frame is a visual token: ``CELLS`` per frame), the demo's small Llama.
"""

from __future__ import annotations

import os
from typing import Any

from . import model as demo_model
from . import tokenizer as demo_tokenizer
from . import video_task
from .tokenizer import IMAGE

VIDEO = "<video>"
MEDIA = {"image_token": IMAGE, "video_token": VIDEO}


def build_tokenizer():
    """The word-level tokenizer over :func:`video_task.vocabulary` with ``<image>``/``<video>``."""
    return demo_tokenizer.build_tokenizer(video_task.vocabulary(), MEDIA)


def build_config(tokenizer=None, **sizes: int):
    """The ``LlavaNextVideoConfig`` (sizes as :data:`demo_model.DEFAULT_SIZES`)."""
    from transformers import LlavaNextVideoConfig

    tokenizer = tokenizer or build_tokenizer()
    s = {**demo_model.DEFAULT_SIZES, **sizes}
    return LlavaNextVideoConfig(
        vision_config=demo_model.vision_config(s, video_task.FRAME_SIZE),
        text_config=demo_model.text_config(tokenizer, s),
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE),
        video_token_index=tokenizer.convert_tokens_to_ids(VIDEO),
        vision_feature_layer=demo_model.VISION_FEATURE_LAYER,
        vision_feature_select_strategy="default",
        image_grid_pinpoints=[[video_task.FRAME_SIZE, video_task.FRAME_SIZE]],
        spatial_pool_mode="average",
        spatial_pool_stride=1,
        image_seq_length=video_task.CELLS,
        video_seq_length=video_task.NUM_TOKENS,
        projector_hidden_act="gelu",
    )


def build_model(config=None, seed: int = 0):
    """A freshly initialised ``LlavaNextVideoForConditionalGeneration`` (train mode)."""
    from transformers import LlavaNextVideoForConditionalGeneration

    tokenizer = build_tokenizer()
    config = config or build_config(tokenizer)
    return demo_model.initialise(LlavaNextVideoForConditionalGeneration, config, tokenizer, seed)


def save(model, directory: str | os.PathLike, extra: dict[str, Any] | None = None) -> None:
    """Weights (safetensors, Hub layout), config and tokenizer, loadable by
    ``LlavaNextVideoForConditionalGeneration.from_pretrained`` / ``AutoTokenizer``.

    No processor is written: the demo feeds ``pixel_values_videos`` itself
    (:func:`video_task.normalize`), and transformers' video processors need torchvision.
    """
    demo_model.save(model, directory, build_tokenizer(), extra)


def load(directory: str | os.PathLike):
    """``(model, tokenizer)`` from a folder written by :func:`save`, in eval mode."""
    from transformers import AutoTokenizer, LlavaNextVideoForConditionalGeneration

    model = LlavaNextVideoForConditionalGeneration.from_pretrained(directory).eval()
    return model, AutoTokenizer.from_pretrained(directory)
