"""Tiny random-weight Qwen2.5-VL and Qwen3-VL checkpoints in the Hub layout, and requests with
images and videos for them, to compare vLLM with transformers.

Both have a 2-layer text model with head_dim 32 (vLLM's CPU attention has no kernel for 16), a
2-layer vision tower, a word-level tokenizer (``w5`` ... ``w99``) holding the family's special
tokens, and the family's own image and video processors. Qwen3-VL's tower feeds deepstack
features into decoder layers 0 and 1. Weights are seeded: equal seeds, equal checkpoints.
"""

from __future__ import annotations

import numpy as np
import torch

from family_checkpoints import save_model
from visprune.demo.tokenizer import word_level_tokenizer

#: Special token ids of both tokenizers.
SPECIALS = {
    "<|image_pad|>": 100,
    "<|video_pad|>": 101,
    "<|vision_start|>": 102,
    "<|vision_end|>": 103,
}
VOCAB = 128
#: Image sides in pixels: multiples of patch * merge (28 for Qwen2.5-VL, 32 for Qwen3-VL).
_PIXELS = {"qwen2_5_vl": (14 * 28 * 28, 36 * 28 * 28), "qwen3_vl": (4 * 32 * 32, 36 * 32 * 32)}
PATCH = {"qwen2_5_vl": 14, "qwen3_vl": 16}
FAMILIES = tuple(PATCH)


def _tokenizer():
    vocab = {"<pad>": 0, "<unk>": 1, "<s>": 2, "</s>": 3}
    vocab.update({f"w{i}": i for i in range(5, 100)})
    vocab.update(SPECIALS)
    vocab.update({f"x{i}": i for i in range(104, VOCAB)})
    return word_level_tokenizer(vocab, specials=list(SPECIALS))


def _text_config(family: str) -> dict:
    text = {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,  # head_dim 32
        "num_key_value_heads": 2,
        "vocab_size": VOCAB,
        "max_position_embeddings": 1024,
        # Wide logits: greedy picks far apart, not decided by float rounding.
        "initializer_range": 0.3,
        "bos_token_id": 2,
        "eos_token_id": 3,
        "pad_token_id": 0,
        "tie_word_embeddings": False,
    }
    if family == "qwen3_vl":
        text["head_dim"] = 32
        text["rope_parameters"] = {
            "rope_type": "default",
            "rope_theta": 10000.0,
            "mrope_section": [6, 5, 5],
            "mrope_interleaved": True,
        }
    else:
        text["rope_parameters"] = {
            "rope_type": "default",
            "rope_theta": 10000.0,
            "mrope_section": [4, 6, 6],
        }
    return text


def _vision_config(family: str) -> dict:
    vision = {
        "depth": 2,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_heads": 2,
        "out_hidden_size": 64,
        "patch_size": PATCH[family],
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "initializer_range": 0.3,
    }
    if family == "qwen3_vl":
        vision["num_position_embeddings"] = 64  # an 8 x 8 table, interpolated to each grid
        vision["deepstack_visual_indexes"] = [0, 1]
    else:
        vision["window_size"] = 56
        vision["fullatt_block_indexes"] = [1]
        vision["tokens_per_second"] = 2
    return vision


def write_tiny_qwen(family: str, directory, seed: int = 0) -> None:
    """Save a random-weight ``family`` ("qwen2_5_vl" or "qwen3_vl") model with its processor."""
    import transformers

    if family == "qwen3_vl":
        config_cls, model_cls = (
            transformers.Qwen3VLConfig,
            transformers.Qwen3VLForConditionalGeneration,
        )
        processor_cls = transformers.Qwen3VLProcessor
        video_cls = transformers.Qwen3VLVideoProcessor
    elif family == "qwen2_5_vl":
        config_cls = transformers.Qwen2_5_VLConfig
        model_cls = transformers.Qwen2_5_VLForConditionalGeneration
        processor_cls = transformers.Qwen2_5_VLProcessor
        video_cls = transformers.Qwen2VLVideoProcessor
    else:
        raise ValueError(f"no tiny checkpoint for {family!r}; choose one of {FAMILIES}")
    config = config_cls(
        text_config=_text_config(family),
        vision_config=_vision_config(family),
        image_token_id=SPECIALS["<|image_pad|>"],
        video_token_id=SPECIALS["<|video_pad|>"],
        vision_start_token_id=SPECIALS["<|vision_start|>"],
        vision_end_token_id=SPECIALS["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    save_model(model_cls(config), directory, hub_tower=False)
    low, high = _PIXELS[family]
    sizes = {"shortest_edge": low, "longest_edge": high}
    patches = {"patch_size": PATCH[family], "merge_size": 2, "temporal_patch_size": 2}
    # A video's pixel budget covers all its frames.
    frames = {"shortest_edge": low, "longest_edge": 8 * high}
    # Qwen3-VL normalizes images like its videos, by 0.5 (as on the Hub): vLLM normalizes
    # both with the image processor's mean and std.
    norm = {"image_mean": [0.5] * 3, "image_std": [0.5] * 3} if family == "qwen3_vl" else {}
    processor_cls(
        image_processor=transformers.Qwen2VLImageProcessor(size=sizes, **norm, **patches),
        video_processor=video_cls(size=frames, do_sample_frames=False, **patches),
        tokenizer=_tokenizer(),
    ).save_pretrained(directory)


#: Image and frame sizes (width, height): several grids per family, some resized.
_SIZES = {
    "qwen2_5_vl": [(112, 112), (84, 140), (140, 84), (120, 100), (112, 56)],
    "qwen3_vl": [(128, 128), (96, 160), (160, 96), (140, 110), (128, 64)],
}


def qwen_requests(family: str, count: int, *, video: bool, seed: int = 0) -> list[dict]:
    """Prompts ``text <vision> text`` with one image (or one video of 4 or 6 frames at 2 fps):
    ``{"prompt", "image"}`` or ``{"prompt", "video", "metadata"}``."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    mark = "<|video_pad|>" if video else "<|image_pad|>"
    requests = []
    for number in range(count):
        width, height = _SIZES[family][number % len(_SIZES[family])]
        before = " ".join(f"w{i}" for i in rng.integers(5, 100, 1 + number % 3))
        after = " ".join(f"w{i}" for i in rng.integers(5, 100, 2 + number % 4))
        request = {"prompt": f"{before} <|vision_start|>{mark}<|vision_end|> {after}"}
        if video:
            frames = 4 + 2 * (number % 2)
            request["video"] = rng.integers(0, 256, (frames, height, width, 3), dtype=np.uint8)
            request["metadata"] = {
                "fps": 2.0,
                "duration": frames / 2.0,
                "total_num_frames": frames,
                "frames_indices": list(range(frames)),
                "video_backend": "opencv",
                "do_sample_frames": False,
            }
        else:
            pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
            request["image"] = Image.fromarray(pixels)
        requests.append(request)
    return requests
