"""The exact analytic FLOPs count against torch's FlopCounterMode on tiny in-process VLMs.

FlopCounterMode counts matmuls, convolutions and (eager) attention bmms; on CPU it does not count
``scaled_dot_product_attention``, so every model here uses eager attention.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import LlavaConfig, LlavaForConditionalGeneration

from tiny_vlms import sample, tiny
from visprune.flops import FlopsBreakdown, model_flops, prefill_flops


def _counted(fn) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        fn()
    return counter.get_total_flops()


def _lm_flops(part: FlopsBreakdown) -> float:
    return part.attention + part.mlp + part.lm_head


def _head_dim_model():
    """Tiny LLaVA whose text head_dim (16) differs from hidden / heads (8), with GQA."""
    text = dict(
        model_type="llama",
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        vocab_size=128,
    )
    vision = dict(
        model_type="clip_vision_model",
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=28,
        patch_size=14,
    )
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=100)
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    return LlavaForConditionalGeneration(config).eval()


def _model(family: str):
    return _head_dim_model() if family == "llava_head_dim" else tiny(family, attn="eager")


LM_FAMILIES = [
    "llava",
    "llava_head_dim",
    "llava_next_video",
    "llava_onevision",
    "qwen2_vl",
    "qwen3_vl",
    "internvl",
    "gemma3",
]


@pytest.mark.parametrize("family", LM_FAMILIES)
def test_language_model_prefill_matches_counter(family):
    model = _model(family)
    visual, text = 7, 5
    embeds = torch.randn(1, visual + text, model.config.text_config.hidden_size)

    def run():
        hidden = model.model.language_model(inputs_embeds=embeds).last_hidden_state
        model.lm_head(hidden)

    counted = _counted(run)
    exact = model_flops(model.config, visual, text, logits="all", vision=False)["prefill"]
    assert exact.vision == exact.projector == 0.0
    assert _lm_flops(exact) == pytest.approx(counted, rel=1e-9)
    # Pruning to 3 visual tokens is the same count on 3 + 5 tokens.
    pruned = model_flops(
        model.config, visual, text, kept_visual_tokens=3, logits="all", vision=False
    )
    assert (
        pruned["prefill"]
        == model_flops(model.config, 3, text, logits="all", vision=False)["prefill"]
    )


def test_logits_last_counts_one_position():
    model = tiny("llava", attn="eager")
    config = model.config
    every = model_flops(config, 4, 6, logits="all")["prefill"]
    last = model_flops(config, 4, 6)["prefill"]
    assert every.lm_head == 10 * last.lm_head == 10 * 2 * 32 * 128
    assert every.total - last.total == every.lm_head - last.lm_head


VISION = [
    ("llava", 1),
    ("llava", 2),
    ("llava_next", 1),
    ("llava_next_video", 1),
    ("llava_onevision", 1),
    ("qwen2_vl", 1),
    ("internvl", 1),
    ("internvl", 2),
    ("gemma3", 1),
    ("gemma3", 2),
]


@pytest.mark.parametrize("family,images", VISION)
def test_vision_and_projector_match_counter(family, images):
    model = tiny(family, attn="eager")
    prompt = sample(family, model, images=images)
    visuals = prompt["visuals"]
    if family == "qwen2_vl":
        kwargs = {
            "pixel_values": torch.cat([v["pixels"] for v in visuals]),
            "image_grid_thw": torch.stack([v["grid"] for v in visuals]),
        }
    elif family == "internvl":  # every tile of every image, flattened
        kwargs = {"pixel_values": torch.cat([v["pixel_values"] for v in visuals])}
    else:
        kwargs = {
            "pixel_values": torch.cat([v["pixel_values"] for v in visuals]),
            **(
                {"image_sizes": torch.cat([v["image_sizes"] for v in visuals])}
                if family not in ("llava", "gemma3")
                else {}
            ),
        }
    features = []

    def run():
        out = model.model.get_image_features(**kwargs)
        features.extend(out.pooler_output if hasattr(out, "pooler_output") else out)

    counted = _counted(run)
    anyres = ("llava_next", "llava_next_video", "llava_onevision")
    tiles = kwargs["pixel_values"].shape[1] if family in anyres else 1
    if family == "internvl":
        tiles = kwargs["pixel_values"].shape[0] // images
    visual_tokens = sum(f.shape[0] for f in features)
    exact = model_flops(model.config, visual_tokens, 0, images=images, tiles_per_image=tiles)
    assert exact["prefill"].vision + exact["prefill"].projector == pytest.approx(counted, rel=1e-9)


@pytest.mark.parametrize("family", ["llava", "llava_head_dim", "gemma3"])
@pytest.mark.parametrize("steps", [1, 3])
def test_decode_steps_match_counter(family, steps):
    """Gemma 3's prompt (10 tokens) outgrows its sliding window (8): its sliding layers read
    only the window the cache keeps."""
    model = _model(family)
    lm, hidden = model.model.language_model, model.config.text_config.hidden_size
    visual, text = 6, 4
    with torch.no_grad():
        cache = lm(inputs_embeds=torch.randn(1, visual + text, hidden), use_cache=True)
    cache = cache.past_key_values

    def run():
        nonlocal cache
        for _ in range(steps):
            out = lm(inputs_embeds=torch.randn(1, 1, hidden), past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            model.lm_head(out.last_hidden_state[:, -1:])

    counted = _counted(run)
    exact = model_flops(model.config, visual, text, decode_steps=steps)["decode"]
    assert exact.vision == exact.projector == 0.0
    assert _lm_flops(exact) == pytest.approx(counted, rel=1e-9)


def _llava_7b_config():
    text = dict(
        model_type="llama",
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        vocab_size=32064,
    )
    vision = dict(
        model_type="clip_vision_model",
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=24,
        num_attention_heads=16,
        image_size=336,
        patch_size=14,
    )
    return LlavaConfig(vision_config=vision, text_config=text)  # no weights built


@pytest.mark.parametrize("visual,text", [(576, 83), (56, 83), (576, 15)])
def test_paper_formula_vs_exact_llava_7b(visual, text):
    config = _llava_7b_config()
    exact = model_flops(config, visual, text)["prefill"]
    n, d, m = visual + text, 4096, 11008
    paper = prefill_flops(n, d, m, 32)
    # The paper's terms are multiply-accumulates: with MHA its 4nd² + 2n²d is exactly half the
    # exact attention count and its 2ndm is a third of the exact gated three-matrix MLP.
    assert paper == pytest.approx(exact.attention / 2 + exact.mlp / 3, rel=1e-12)
    # In FLOPs (x2) the paper formula undercounts the language model by the third MLP matrix
    # and the lm_head: 2 x paper is 75-80 % of the exact language-model prefill here.
    ratio = 2 * paper / _lm_flops(exact)
    assert 0.75 < ratio < 0.80
    assert exact.lm_head == 2 * d * 32064  # last position only
    # CLIP ViT-L/14-336, 24 layers on 577 tokens (~0.382 T) plus the patch embedding (~0.7 G)
    # and the 1024 -> 4096 -> 4096 projector on 576 tokens (~24 G): ~0.406 TFLOPs per image.
    assert exact.vision + exact.projector == pytest.approx(0.406e12, rel=1e-2)


def test_unsupported_vision_and_bad_inputs():
    config = tiny("qwen2_5_vl").config
    with pytest.raises(ValueError, match="vision FLOPs of 'qwen2_5_vl' are not supported"):
        model_flops(config, 6, 4)
    lm_only = model_flops(config, 6, 4, vision=False)["prefill"]
    assert lm_only.vision == 0.0 and lm_only.attention > 0
    llava = tiny("llava").config
    for bad, match in [
        ({"visual_tokens": -1}, "visual_tokens"),
        ({"text_tokens": 2.5}, "text_tokens"),
        ({"decode_steps": -2}, "decode_steps"),
        ({"kept_visual_tokens": 9}, "exceeds"),
        ({"logits": "some"}, "logits"),
        ({"tiles_per_image": 3}, "tiles_per_image"),
        ({"images": 0}, "images"),
    ]:
        args = {"visual_tokens": 4, "text_tokens": 3, **bad}
        with pytest.raises(ValueError, match=match):
            model_flops(llava, args.pop("visual_tokens"), args.pop("text_tokens"), **args)
    bogus = LlavaConfig()
    bogus.model_type = "blip"
    with pytest.raises(ValueError, match="supported: llava"):
        model_flops(bogus, 4, 3)
