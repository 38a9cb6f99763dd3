"""Tiny in-process vision-language models for the adapter tests: every family's config and
:func:`tiny`, which builds one with seeded random weights.

Every model is built from a config (no download), small enough to run in milliseconds on a CPU:
a 2-layer, 32-wide language model (Llama, Qwen2, Qwen2-VL, Qwen3-VL dense and MoE or Gemma 3
text) behind a 2-layer CLIP, SigLIP, Qwen or InternViT tower. Their inputs are built in
:mod:`tiny_vlms`.
"""

from __future__ import annotations

import torch
from transformers import (
    Gemma3Config,
    Gemma3ForConditionalGeneration,
    InternVLConfig,
    InternVLForConditionalGeneration,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextVideoConfig,
    LlavaNextVideoForConditionalGeneration,
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    Qwen3VLMoeConfig,
    Qwen3VLMoeForConditionalGeneration,
)

#: Special token ids, inside the vocabulary of 128: image, video, vision start, vision end.
IMG, VID, VS, VE = 100, 101, 102, 103
#: Pad token id of the left-padded batches.
PAD = 0

FAMILIES = (
    "llava",
    "llava_next",
    "llava_next_video",
    "llava_onevision",
    "qwen2_5_vl",
    "qwen2_vl",
    "qwen3_vl",
    "qwen3_vl_moe",
    "internvl",
    "gemma3",
)
QWEN = frozenset({"qwen2_5_vl", "qwen2_vl", "qwen3_vl", "qwen3_vl_moe"})
QWEN3 = frozenset({"qwen3_vl", "qwen3_vl_moe"})
#: InternVL: pixel-shuffled tokens per 32-px tile (8x8 patches of 4 px, shuffled 2x2 -> 4x4).
INTERNVL_TILE_TOKENS = 16
#: The (H, W) resolutions an anyres family tiles an image into.
PINPOINTS = {
    "llava_next": [[28, 56], [56, 28], [56, 56]],
    "llava_next_video": [[56, 112], [112, 56], [112, 112]],
    "llava_onevision": [[56, 56], [56, 112], [112, 56], [112, 112]],
}

_TEXT = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 128,
    "max_position_embeddings": 512,
}
#: The tiny CLIP tower: 28 / 14 = 2x2 patches plus CLS.
CLIP_TOWER = {
    "model_type": "clip_vision_model",
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "image_size": 28,
    "patch_size": 14,
}
_CLIP56 = dict(CLIP_TOWER, image_size=56)  # 4x4 patches plus CLS; video frames pool to 2x2
_SIGLIP = {  # 56 / 14 = 4x4 patches, no CLS
    "model_type": "siglip_vision_model",
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "image_size": 56,
    "patch_size": 14,
}
#: Qwen text config: head_dim 8, so the M-RoPE sections must sum to 4.
_QWEN_TEXT = dict(
    _TEXT,
    rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [1, 1, 2]},
    bos_token_id=None,
    eos_token_id=None,
)
_QWEN25_VISION = {
    "depth": 2,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_heads": 2,
    "out_hidden_size": 32,
    "patch_size": 14,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
    "window_size": 56,
    "fullatt_block_indexes": [1],
    "tokens_per_second": 2,
}
_QWEN3_TEXT = dict(
    _QWEN_TEXT,
    head_dim=8,
    rope_parameters={
        "rope_type": "default",
        "rope_theta": 10000.0,
        "mrope_section": [1, 1, 2],
        "mrope_interleaved": True,
    },
)
_QWEN3_VISION = {
    "depth": 2,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_heads": 2,
    "patch_size": 14,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
    "out_hidden_size": 32,
    "num_position_embeddings": 16,
    "deepstack_visual_indexes": [0, 1],  # deepstack features added inside decoder layers 0 and 1
}
_QWEN2_VISION = {
    "depth": 2,
    "embed_dim": 32,
    "hidden_size": 32,
    "num_heads": 2,
    "mlp_ratio": 2,
    "patch_size": 14,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
}
_INTERNVL_VISION = {  # 32 / 4 = 8x8 patches plus CLS; pixel shuffle -> 4x4 tokens per tile
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "image_size": 32,
    "patch_size": 4,
}
#: Gemma 3: 8x8 SigLIP patches average-pooled to a 4x4 grid of soft tokens per image.
GEMMA3_TOKENS = 16
#: Gemma 3's sliding window, shorter than every prompt here, so it masks something.
GEMMA3_WINDOW = 8
_GEMMA3_TEXT = dict(
    _TEXT,
    num_hidden_layers=3,
    layer_types=["sliding_attention", "full_attention", "sliding_attention"],
    sliding_window=GEMMA3_WINDOW,
    head_dim=8,
    query_pre_attn_scalar=8,
    bos_token_id=None,
    eos_token_id=None,
)
_GEMMA3_VISION = dict(_SIGLIP, patch_size=7, vision_use_head=False)  # 56 / 7 = 8x8 patches
_QWEN3_MOE_TEXT = dict(_QWEN3_TEXT, moe_intermediate_size=16, num_experts=4, num_experts_per_tok=2)

#: LLaVA-style families: config class, model class, vision tower, language model type and
#: what else the config takes.
_LLAVA = {
    "llava": (
        LlavaConfig,
        LlavaForConditionalGeneration,
        CLIP_TOWER,
        "llama",
        {"image_seq_length": 4},
    ),
    "llava_next": (
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        CLIP_TOWER,
        "llama",
        {"image_grid_pinpoints": PINPOINTS["llava_next"]},
    ),
    "llava_next_video": (
        LlavaNextVideoConfig,
        LlavaNextVideoForConditionalGeneration,
        _CLIP56,
        "llama",
        {"video_token_index": VID, "image_grid_pinpoints": PINPOINTS["llava_next_video"]},
    ),
    "llava_onevision": (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        _SIGLIP,
        "qwen2",
        {"video_token_index": VID, "image_grid_pinpoints": PINPOINTS["llava_onevision"]},
    ),
}
#: Qwen-VL families: config class, model class, text and vision configs.
_QWEN = {
    "qwen2_5_vl": (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        _QWEN_TEXT,
        _QWEN25_VISION,
    ),
    "qwen2_vl": (Qwen2VLConfig, Qwen2VLForConditionalGeneration, _QWEN_TEXT, _QWEN2_VISION),
    "qwen3_vl": (Qwen3VLConfig, Qwen3VLForConditionalGeneration, _QWEN3_TEXT, _QWEN3_VISION),
    "qwen3_vl_moe": (
        Qwen3VLMoeConfig,
        Qwen3VLMoeForConditionalGeneration,
        _QWEN3_MOE_TEXT,
        _QWEN3_VISION,
    ),
}


def tiny(family: str, attn: str = "sdpa", seed: int = 0):
    """A randomly initialised ``...ForConditionalGeneration`` of ``family`` in eval mode.

    Parameters
    ----------
    family : str
        One of :data:`FAMILIES`.
    attn : str
        Attention implementation ("sdpa" or "eager").
    seed : int
        Seed of the weights; equal seeds give equal weights.
    """
    torch.manual_seed(seed)
    config, cls = _config(family)
    config._attn_implementation = attn  # propagates to the text and vision sub-configs
    model = cls(config).eval()
    # No end-of-sequence token: every generation runs to max_new_tokens, so rows compare 1:1.
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = PAD
    return model


def _config(family: str):
    """The config of ``family`` and the model class that it builds."""
    if family in _LLAVA:
        config_cls, cls, vision, text_type, extra = _LLAVA[family]
        text = dict(model_type=text_type, **_TEXT)
        config = config_cls(vision_config=vision, text_config=text, image_token_index=IMG, **extra)
        return config, cls
    if family in _QWEN:
        config_cls, cls, text, vision = _QWEN[family]
        config = config_cls(
            text_config=text,
            vision_config=vision,
            image_token_id=IMG,
            video_token_id=VID,
            vision_start_token_id=VS,
            vision_end_token_id=VE,
        )
        return config, cls
    if family == "internvl":
        config = InternVLConfig(
            vision_config=_INTERNVL_VISION,
            text_config=dict(model_type="qwen2", **_TEXT),
            image_token_id=IMG,
            image_seq_length=INTERNVL_TILE_TOKENS,
            # Untied: a tiny random model with tied embeddings greedily repeats one token.
            tie_word_embeddings=False,
        )
        return config, InternVLForConditionalGeneration
    if family == "gemma3":
        config = Gemma3Config(
            text_config=_GEMMA3_TEXT,
            vision_config=_GEMMA3_VISION,
            mm_tokens_per_image=GEMMA3_TOKENS,
            image_token_index=IMG,
            boi_token_index=VS,
            eoi_token_index=VE,
        )
        return config, Gemma3ForConditionalGeneration
    raise ValueError(f"unknown family {family!r}; choose one of {FAMILIES}")
