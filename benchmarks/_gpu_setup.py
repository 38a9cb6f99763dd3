"""What ``gpu.py`` measures: a random-weight LLaVA-1.5 of LLaVA-1.5-7B's shapes (or small ones
for a CPU), its prompts of one image each, and the budgets kept of the image's 576 tokens."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import LlavaConfig, LlavaForConditionalGeneration

BUDGETS = (64, 128, 192)
IMAGE_TOKENS = 576
IMAGE_TOKEN = 32000
PROMPT_BEFORE, PROMPT_AFTER = 5, 35


@dataclass(frozen=True)
class Shapes:
    """The model's shapes: LLaVA-1.5-7B's (``full``) or small ones for a CPU."""

    name: str
    vision: dict
    text: dict
    dtype: torch.dtype


FULL = Shapes(
    name="LLaVA-1.5-7B (CLIP ViT-L/14-336, Llama-2-7B), bfloat16",
    vision={
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
    },
    text={
        "hidden_size": 4096,
        "intermediate_size": 11008,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
    },
    dtype=torch.bfloat16,
)

SMALL = Shapes(
    name="small (vision: 1 layer, width 64; language model: 2 layers, width 128), float32",
    vision={
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 1,
        "num_attention_heads": 4,
    },
    text={
        "hidden_size": 128,
        "intermediate_size": 352,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
    },
    dtype=torch.float32,
)


def build_model(shapes: Shapes, device: torch.device) -> LlavaForConditionalGeneration:
    """A random-weight LLaVA-1.5 of ``shapes`` on ``device``: 24 x 24 patches at 336 px."""
    config = LlavaConfig(
        vision_config={
            "model_type": "clip_vision_model",
            "image_size": 336,
            "patch_size": 14,
            **shapes.vision,
        },
        text_config={
            "model_type": "llama",
            "vocab_size": 32064,
            "max_position_embeddings": 4096,
            **shapes.text,
        },
        image_token_index=IMAGE_TOKEN,
        image_seq_length=IMAGE_TOKENS,
        vision_feature_layer=-2,
    )
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device(device):
        model = LlavaForConditionalGeneration._from_config(config, dtype=shapes.dtype)
    return model.eval()


def build_inputs(batch: int, dtype: torch.dtype, device: torch.device) -> dict:
    """``batch`` prompts of one image each: 5 prompt tokens, the image, 35 prompt tokens."""
    generator = torch.Generator().manual_seed(1)
    rows = []
    for _ in range(batch):
        text = torch.randint(1, 31000, (PROMPT_BEFORE + PROMPT_AFTER,), generator=generator)
        image = torch.full((IMAGE_TOKENS,), IMAGE_TOKEN)
        rows.append(torch.cat([text[:PROMPT_BEFORE], image, text[PROMPT_BEFORE:]]))
    ids = torch.stack(rows)
    return {
        "input_ids": ids.to(device),
        "attention_mask": torch.ones_like(ids).to(device),
        "pixel_values": torch.randn(batch, 3, 336, 336, generator=generator).to(device, dtype),
    }
