"""The VLM families :func:`visprune.flops.model_flops` counts, by ``model_type``, and how their
visual inputs differ: anyres tiles, InternVL tiles, frame videos or Qwen ``(t, h, w)`` grids."""

from __future__ import annotations

#: LLaVA-style families: a CLIP / SigLIP tower and an MLP projector.
LLAVA_TYPES = ("llava", "llava_next", "llava_next_video", "llava_onevision")
#: Qwen-VL families: a windowed or framed ViT on ``(t, h, w)`` patch grids and a patch merger.
QWEN_TYPES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe")
#: Families whose images are a base tile plus anyres tiles.
ANYRES_MODEL_TYPES = ("llava_next", "llava_next_video", "llava_onevision")
#: Families whose vision tower encodes several crops (tiles) per image.
TILED_MODEL_TYPES = (*ANYRES_MODEL_TYPES, "internvl")
#: VLM ``model_type`` values that :func:`visprune.flops.model_flops` counts (language model,
#: vision tower and projector).
MODEL_TYPES = (*LLAVA_TYPES, *QWEN_TYPES, "internvl", "gemma3")
#: Those whose vision tower and projector it also counts (all of them).
VISION_MODEL_TYPES = MODEL_TYPES
#: Families with a video input of ``frames`` frames per video (``videos=``); the Qwen families'
#: videos are described by their ``grids`` instead.
FRAME_VIDEO_MODEL_TYPES = ("llava_next_video", "llava_onevision")
