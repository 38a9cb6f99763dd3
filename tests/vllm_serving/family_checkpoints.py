"""Tiny seeded checkpoints of InternVL, Gemma 3, LLaVA-OneVision and LLaVA-NeXT in the Hub
layout, for comparing vLLM with transformers.

Each writer saves a random-weight model (seeded, float32) with its family's own processor
classes and a word-level tokenizer (``w5`` ... ``w63`` are words), sized so that vLLM's CPU
attention serves it (head_dim 32; its kernels have none of 16). Every model has untied,
wide-initialised output embeddings, so greedy picks are far apart and never decided by float
rounding. SigLIP and CLIP towers are renamed to the Hub's ``vision_tower.vision_model.*``, the
only names vLLM reads (transformers loads both; :func:`visprune.demo.model.to_hub_layout`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from visprune.demo.model import to_hub_layout
from visprune.demo.tokenizer import word_level_tokenizer

#: Words of every prompt; the special tokens of a family sit at ids below 5 and from 64 on.
WORDS = [f"w{i}" for i in range(5, 64)]
#: Gemma 3's processor writes an image as ``\n\n<boi> ... <eoi>\n\n``, and vLLM's looks these up.
NEWLINES = ["\n", "\n\n", "\n\n\n", "\n\n\n\n"]

_TEXT = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,  # head_dim 32
    "num_key_value_heads": 2,
    "max_position_embeddings": 1024,
    "initializer_range": 0.3,
    "tie_word_embeddings": False,
}
_SIGLIP = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
}


def tokenizer(specials: list[str], named: dict[str, str] | None = None):
    """A word-level tokenizer: ``<pad> <unk> <s> </s>``, then ``specials`` (ids 4 ...), then
    :data:`WORDS`; ``named`` are the tokenizer attributes a processor reads (``image_token``).
    Newlines are plain added tokens (matched before whitespace splitting), the rest special."""
    return word_level_tokenizer(
        ["<pad>", "<unk>", "<s>", "</s>", *specials, *WORDS],
        media=named,
        specials=[token for token in specials if token not in NEWLINES],
        plain=[token for token in specials if token in NEWLINES],
    )


def save_model(model, directory, hub_tower: bool) -> None:
    """Save ``model`` with no end of sequence (every answer runs to max_new_tokens), its vision
    tower's weights under the Hub's names if ``hub_tower``."""
    model.generation_config.eos_token_id = None
    model.save_pretrained(directory)
    if hub_tower:
        to_hub_layout(Path(directory) / "model.safetensors")


def write_internvl(directory, seed: int = 0) -> None:
    """InternVL (HF format): 32-px tiles of 8x8 ViT patches, pixel-shuffled to 16 tokens per
    tile, up to 4 tiles plus a thumbnail per image; a 2-layer Qwen2. ``<IMG_CONTEXT>`` = 4."""
    from transformers import (
        GotOcr2ImageProcessor,
        InternVLConfig,
        InternVLForConditionalGeneration,
        InternVLProcessor,
        InternVLVideoProcessor,
    )

    words = tokenizer(
        ["<IMG_CONTEXT>", "<img>", "</img>", "<video>"],
        {
            "context_image_token": "<IMG_CONTEXT>",
            "start_image_token": "<img>",
            "end_image_token": "</img>",
            "video_token": "<video>",
        },
    )
    config = InternVLConfig(
        vision_config={
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 4,
        },
        text_config=dict(model_type="qwen2", vocab_size=len(words), **_TEXT),
        image_token_id=4,
        image_seq_length=16,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    save_model(InternVLForConditionalGeneration(config), Path(directory), hub_tower=False)
    side = {"height": 32, "width": 32}
    InternVLProcessor(
        image_processor=GotOcr2ImageProcessor(size=side, crop_to_patches=True, max_patches=4),
        tokenizer=words,
        video_processor=InternVLVideoProcessor(size=side),
        image_seq_length=16,
    ).save_pretrained(directory)


#: Gemma 3's sliding window: shorter than every prompt, so its layers mask something.
GEMMA3_WINDOW = 24


def write_gemma3(directory, seed: int = 0) -> None:
    """Gemma 3: a 56-px SigLIP of 8x8 patches pooled to 16 soft tokens per image; 3 text layers
    (sliding, full, sliding). ``<image_soft_token>`` = 4, ``<start_of_image>`` = 5."""
    from transformers import (
        Gemma3Config,
        Gemma3ForConditionalGeneration,
        Gemma3ImageProcessor,
        Gemma3Processor,
    )

    words = tokenizer(
        ["<image_soft_token>", "<start_of_image>", "<end_of_image>", *NEWLINES],
        {
            "image_token": "<image_soft_token>",
            "boi_token": "<start_of_image>",
            "eoi_token": "<end_of_image>",
        },
    )
    text = dict(
        _TEXT,
        vocab_size=len(words),
        num_hidden_layers=3,
        head_dim=32,
        query_pre_attn_scalar=32,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"],
        sliding_window=GEMMA3_WINDOW,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=3,
    )
    config = Gemma3Config(
        text_config=text,
        vision_config=dict(_SIGLIP, image_size=56, patch_size=7, vision_use_head=False),
        mm_tokens_per_image=16,
        image_token_index=4,
        boi_token_index=5,
        eoi_token_index=6,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    save_model(Gemma3ForConditionalGeneration(config), Path(directory), hub_tower=True)
    Gemma3Processor(
        image_processor=Gemma3ImageProcessor(size={"height": 56, "width": 56}),
        tokenizer=words,
        image_seq_length=16,
    ).save_pretrained(directory)


#: OneVision anyres grids (84-px tiles of 6x6 patches); video frames pool to 3x3 tokens.
ONEVISION_PINPOINTS = [[84, 84], [84, 168], [168, 84], [168, 168]]


def write_onevision(directory, seed: int = 0) -> None:
    """LLaVA-OneVision: an 84-px SigLIP of 6x6 patches, anyres up to 2x2 tiles, video frames
    pooled to 3x3; a 2-layer Qwen2. ``<image>`` = 4, ``<video>`` = 5."""
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        LlavaOnevisionImageProcessor,
        LlavaOnevisionProcessor,
        LlavaOnevisionVideoProcessor,
    )

    words = tokenizer(["<image>", "<video>"], {"image_token": "<image>", "video_token": "<video>"})
    config = LlavaOnevisionConfig(
        vision_config=dict(
            _SIGLIP,
            model_type="siglip_vision_model",
            image_size=84,
            patch_size=14,
            vision_use_head=False,
        ),
        text_config=dict(model_type="qwen2", vocab_size=len(words), **_TEXT),
        image_token_index=4,
        video_token_index=5,
        image_grid_pinpoints=ONEVISION_PINPOINTS,
        vision_feature_layer=-1,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    save_model(LlavaOnevisionForConditionalGeneration(config), Path(directory), hub_tower=True)
    side = {"height": 84, "width": 84}
    LlavaOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessor(
            size=side, image_grid_pinpoints=ONEVISION_PINPOINTS
        ),
        tokenizer=words,
        video_processor=LlavaOnevisionVideoProcessor(size=side),
        num_image_tokens=36,
        vision_feature_select_strategy="full",
        image_token="<image>",
        video_token="<video>",
    ).save_pretrained(directory)


def write_tiny_llava_next(directory, seed: int = 0) -> None:
    """A random-weight LLaVA-NeXT checkpoint (2-layer CLIP at 28 px, anyres pinpoints up to
    56 x 56, 2-layer Llama) with a word-level tokenizer (``w5`` ... ``w63``, ``<image>`` = 4)
    and its processor, for comparing vLLM with transformers."""
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextImageProcessor,
        LlavaNextProcessor,
    )

    words = tokenizer(["<image>"])
    pinpoints = [[28, 56], [56, 28], [56, 56]]
    config = LlavaNextConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=28,
            patch_size=14,
            projection_dim=32,
        ),
        text_config=LlamaConfig(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=2,  # head_dim 32: vLLM's CPU attention has no kernel for 16
            num_key_value_heads=2,
            vocab_size=len(words),
            max_position_embeddings=512,
            # Wide logits: greedy picks far apart, not decided by float rounding.
            initializer_range=0.3,
            pad_token_id=0,
            bos_token_id=2,
            eos_token_id=3,
        ),
        image_token_index=4,
        image_grid_pinpoints=pinpoints,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    save_model(LlavaNextForConditionalGeneration(config), directory, hub_tower=True)
    image_processor = LlavaNextImageProcessor(
        size={"shortest_edge": 28},
        crop_size={"height": 28, "width": 28},
        image_grid_pinpoints=pinpoints,
    )
    LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=words,
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        image_token="<image>",
    ).save_pretrained(directory)
