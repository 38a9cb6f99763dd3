"""A random-weight Qwen2.5-VL-shaped checkpoint in the Hub layout, for ``benchmarks/serving.py``.

Scaled down from Qwen2.5-VL-7B-Instruct so that one request prefills in a few seconds on one CPU
core, keeping what decides how much pruning saves: the language model's proportions (head_dim
128, grouped-query attention, an MLP 5.25x wide, M-RoPE sections 16/24/24), Qwen2.5-VL's vision
tower (14-px patches, 2 x 2 merge, 112-px attention windows, full attention in the last block of
every group) and about the 7B's ratio of vision-tower to language-model FLOPs per visual token
(see :func:`vision_share`), since the tower runs on every patch whatever the budget.

The tokenizer is word-level (``w<id>`` for every id, the family's special tokens at the top of
the vocabulary); the chat template puts each image in ``<|vision_start|><|image_pad|>
<|vision_end|>`` and the text as given, so every request has the same text length.
"""

from __future__ import annotations

from pathlib import Path

from _checkpoint import VOCAB, image_then_text, save_model, word_tokenizer

SPECIALS = {
    "<|image_pad|>": VOCAB - 4,
    "<|video_pad|>": VOCAB - 3,
    "<|vision_start|>": VOCAB - 2,
    "<|vision_end|>": VOCAB - 1,
}
#: Word ids a prompt may draw from (no special token among them).
WORDS = range(4, VOCAB - len(SPECIALS))
CHAT_TEMPLATE = image_then_text("<|vision_start|><|image_pad|><|vision_end|>")

#: The benchmark's default depths: with hidden 1024, the vision tower and merger take 27% of an
#: unpruned request's prefill FLOPs on a 640 x 480 image, as in Qwen2.5-VL-7B (27%).
QWEN_LAYERS = 8
QWEN_VISION_DEPTH = 4

#: Qwen2.5-VL-7B-Instruct's published sizes (its config.json), for the FLOPs comparison only.
QWEN2_5_VL_7B = {
    "text": {
        "hidden_size": 3584,
        "intermediate_size": 18944,
        "num_hidden_layers": 28,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
        "vocab_size": 152064,
    },
    "vision": {
        "depth": 32,
        "hidden_size": 1280,
        "intermediate_size": 3420,
        "num_heads": 16,
        "out_hidden_size": 3584,
        "fullatt_block_indexes": [7, 15, 23, 31],
    },
}


def text_config(hidden: int, layers: int) -> dict:
    """The language model: ``hidden`` wide (heads of 128, four query heads per key/value head),
    ``layers`` deep."""
    heads = hidden // 128
    return {
        "hidden_size": hidden,
        "intermediate_size": hidden * 21 // 4,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": max(1, heads // 4),
        "vocab_size": VOCAB,
        "max_position_embeddings": 8192,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 1000000.0,
            "mrope_section": [16, 24, 24],
        },
        "bos_token_id": 2,
        "eos_token_id": 3,
        "pad_token_id": 0,
        "tie_word_embeddings": False,
    }


def vision_config(out_hidden: int, depth: int) -> dict:
    """Qwen2.5-VL's tower at width 512 (heads of 64, MLP 2.67x wide), ``depth`` blocks, full
    attention in the last."""
    return {
        "depth": depth,
        "hidden_size": 512,
        "intermediate_size": 1368,
        "num_heads": 8,
        "out_hidden_size": out_hidden,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "window_size": 112,
        "fullatt_block_indexes": [depth - 1],
        "tokens_per_second": 2,
    }


def qwen_config(text: dict, vision: dict):
    from transformers import Qwen2_5_VLConfig

    return Qwen2_5_VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=SPECIALS["<|image_pad|>"],
        video_token_id=SPECIALS["<|video_pad|>"],
        vision_start_token_id=SPECIALS["<|vision_start|>"],
        vision_end_token_id=SPECIALS["<|vision_end|>"],
        tie_word_embeddings=False,
    )


def qwen2_5_vl_7b_config():
    """Qwen2.5-VL-7B-Instruct's config (sizes only, no weights), for the FLOPs comparison."""
    text = {**text_config(3584, 28), **QWEN2_5_VL_7B["text"]}
    vision = {**vision_config(3584, 32), **QWEN2_5_VL_7B["vision"]}
    return qwen_config(text, vision)


def vision_share(config, grid: tuple[int, int, int], text_tokens: int) -> float:
    """Share of an unpruned prompt's prefill FLOPs spent in the vision tower and merger (what
    no budget saves): one image of patch grid ``grid`` plus ``text_tokens``."""
    from visprune.flops import model_flops

    merge = config.vision_config.spatial_merge_size
    visual = grid[0] * grid[1] * grid[2] // merge**2
    prefill = model_flops(config, visual, text_tokens, grids=[grid])["prefill"]
    return (prefill.vision + prefill.projector) / prefill.total


def write_qwen_checkpoint(directory: Path, hidden: int, layers: int, vision_depth: int) -> None:
    """Save the seeded random-weight model, its tokenizer and its processor (the Hub's pixel
    range: images keep their size, rounded to multiples of 28, up to 12.8 M pixels)."""
    import torch
    from transformers import (
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    config = qwen_config(text_config(hidden, layers), vision_config(hidden, vision_depth))
    torch.manual_seed(0)
    save_model(Qwen2_5_VLForConditionalGeneration(config), directory, hub_tower=False)
    patches = {"patch_size": 14, "merge_size": 2, "temporal_patch_size": 2}
    sizes = {"shortest_edge": 4 * 28 * 28, "longest_edge": 16384 * 28 * 28}
    Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(size=sizes, **patches),
        video_processor=Qwen2VLVideoProcessor(size=sizes, **patches),
        tokenizer=word_tokenizer(SPECIALS),
        chat_template=CHAT_TEMPLATE,
    ).save_pretrained(directory)


def image_grid(directory: Path, image) -> tuple[int, int, int]:
    """The ``(t, h, w)`` patch grid the saved processor makes of ``image`` (a PIL image)."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(directory)
    grid = processor.image_processor(images=[image], return_tensors="pt")["image_grid_thw"][0]
    return tuple(int(v) for v in grid)
