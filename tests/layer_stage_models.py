"""The tiny VLMs and method settings shared by the layer-stage tests (FastV, PyramidDrop, DART).

:func:`deep` gives a family's tiny model with a 4-layer language model, deep enough for every
pruning layer in :data:`METHODS`.
"""

from __future__ import annotations

import copy

import torch

from tiny_vlms import PAD, tiny

LAYERS = 4
#: (method, parameters) with pruning layers that fit a 4-layer language model.
METHODS = [
    ("fastv", {"layer": 2, "budget": 0.5}),
    ("pdrop", {"layers": (1, 2, 3), "budget": 0.75, "ratio": 0.5}),
    ("dart", {"layer": 2, "budget": 0.5, "image_pivots": 1, "text_pivots": 2}),
]


def deep(family: str, attn: str = "sdpa"):
    """The tiny model of ``family`` with a 4-layer language model (the pruning layers fit)."""
    config = copy.deepcopy(tiny(family, attn=attn).config)
    config.text_config.num_hidden_layers = LAYERS
    if getattr(config.text_config, "layer_types", None):
        config.text_config.layer_types = ["full_attention"] * LAYERS
    torch.manual_seed(0)
    model = type(tiny(family, attn=attn))(config).eval()
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = PAD
    return model
