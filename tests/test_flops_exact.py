"""The exact analytic FLOPs count against torch's FlopCounterMode on tiny in-process VLMs.

FlopCounterMode counts matmuls, convolutions and (eager) attention bmms; on CPU it does not count
``scaled_dot_product_attention``, so every model here uses eager attention.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import (
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaNextVideoForConditionalGeneration,
)

from tiny_vlm_models import CLIP_TOWER
from tiny_vlms import FAMILIES, QWEN, collate, sample, tiny, token_counts
from visprune.flops import FlopsBreakdown, model_flops, prefill_flops, window_lengths


def _grouped_mm_flops(input_shape, weight_shape, *args, out_shape=None, **kwargs) -> int:
    """``aten._grouped_mm`` of ``(S, k)`` rows against per-group ``(k, n)`` weights: every row
    meets one group's weight (FlopCounterMode has no formula for it and would count zero)."""
    rows, inner = input_shape
    return 2 * rows * inner * weight_shape[-1]


def _counted(fn) -> int:
    mapping = {torch.ops.aten._grouped_mm: _grouped_mm_flops}
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter, torch.no_grad():
        fn()
    return counter.get_total_flops()


def _lm_flops(part: FlopsBreakdown) -> float:
    return part.attention + part.mlp + part.lm_head


def _llava_config(text: dict, vision: dict, **options) -> LlavaConfig:
    """A LLaVA config of a Llama language model of sizes ``text`` behind a CLIP tower of sizes
    ``vision``; ``options`` go to the config itself."""
    return LlavaConfig(
        vision_config={"model_type": "clip_vision_model", **vision},
        text_config=dict(model_type="llama", **text),
        **options,
    )


def _head_dim_model():
    """Tiny LLaVA whose text head_dim (16) differs from hidden / heads (8), with GQA, behind the
    tiny CLIP tower."""
    text = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        vocab_size=128,
    )
    config = _llava_config(text, CLIP_TOWER, image_token_index=100)
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    return LlavaForConditionalGeneration(config).eval()


def _model(family: str):
    return _head_dim_model() if family == "llava_head_dim" else tiny(family, attn="eager")


LM_FAMILIES = ["llava_head_dim", *FAMILIES]


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


#: (family, options of ``tiny_vlms.sample``): every family, images and (where the model has
#: a video input) videos, several images of different sizes, Qwen grids whose windows are cut
#: at the image edge and grids that are whole multiples of the window.
VISION = [
    ("llava", {}),
    ("llava", {"images": 2}),
    ("llava_next", {}),
    ("llava_next", {"images": 2, "size": [(28, 56), (56, 56)]}),
    ("llava_next_video", {}),
    ("llava_next_video", {"video": True}),
    ("llava_next_video", {"video": True, "images": 2, "frames": 3}),
    ("llava_onevision", {}),
    ("llava_onevision", {"images": 2, "size": [(56, 56), (56, 112)]}),  # base crops only
    ("llava_onevision", {"video": True}),
    ("llava_onevision", {"video": True, "images": 2, "frames": 3}),
    ("qwen2_vl", {}),
    ("qwen2_vl", {"images": 2, "size": [(4, 4), (2, 6)]}),
    ("qwen2_vl", {"video": True, "frames": 3}),
    ("qwen2_5_vl", {}),  # 2x3 merged tokens: a 2x2 window and a 2x1 edge window
    ("qwen2_5_vl", {"size": (8, 4)}),  # whole windows only
    ("qwen2_5_vl", {"images": 2, "size": [(6, 10), (2, 2)]}),
    ("qwen2_5_vl", {"video": True}),
    ("qwen2_5_vl", {"video": True, "images": 2, "frames": 3, "size": [(6, 6), (4, 2)]}),
    ("qwen3_vl", {}),
    ("qwen3_vl", {"images": 2, "size": [(4, 4), (2, 6)]}),
    ("qwen3_vl", {"video": True, "frames": 3}),
    ("qwen3_vl_moe", {}),
    ("qwen3_vl_moe", {"video": True}),
    ("internvl", {}),
    ("internvl", {"images": 2, "size": [1, 5]}),
    ("gemma3", {}),
    ("gemma3", {"images": 2}),
]


def _vision_call(family: str, model, options: dict):
    """The model's own feature call on one prompt's visuals, and model_flops' description."""
    prompt = sample(family, model, **options)
    visuals, batch = prompt["visuals"], collate([prompt])
    video = options.get("video", False)
    count = len(visuals)
    described = {"images": 0 if video else count, "videos": count if video else 0}
    base = model.model
    if family in QWEN:
        kind = "video" if video else "image"
        key = "pixel_values_videos" if video else "pixel_values"
        grids = [v["grid"].tolist() for v in visuals]
        described["grids"] = grids
        visual_tokens = sum(t * h * w for t, h, w in grids) // 4
        call = getattr(base, f"get_{kind}_features")
        kwargs = {key: batch[key], f"{kind}_grid_thw": batch[f"{kind}_grid_thw"]}
    else:
        visual_tokens = sum(token_counts(family, model, visuals))
        if video:
            described["frames"] = options.get("frames", 2)
            call, kwargs = (
                base.get_video_features,
                {"pixel_values_videos": batch["pixel_values_videos"]},
            )
        else:
            call = base.get_image_features
            kwargs = {k: v for k, v in batch.items() if k not in ("input_ids", "attention_mask")}
            if family == "internvl":
                described["tiles_per_image"] = [v["pixel_values"].shape[0] for v in visuals]
            elif family == "llava_onevision" and count > 1:
                described["tiles_per_image"] = 1  # several images: the base crop of each
            elif family in ("llava_next", "llava_next_video", "llava_onevision"):
                described["tiles_per_image"] = [v["pixel_values"].shape[1] for v in visuals]
    return (lambda: call(**kwargs)), visual_tokens, described


@pytest.mark.parametrize(
    "family,options", VISION, ids=[f"{f}-{'-'.join(map(str, o.values()))}" for f, o in VISION]
)
def test_vision_and_projector_match_counter(family, options):
    model = tiny(family, attn="eager")
    run, visual_tokens, described = _vision_call(family, model, options)
    counted = _counted(run)
    exact = model_flops(model.config, visual_tokens, 0, **described)["prefill"]
    assert exact.vision > 0 and exact.projector > 0
    assert exact.vision + exact.projector == pytest.approx(counted, rel=1e-9)


@pytest.mark.parametrize("mode", ["max", "conv"])
def test_llava_next_video_pooling_modes(mode):
    """Max pooling is no matmul; "conv" pooling is a convolution, counted with the projector."""
    config = tiny("llava_next_video").config
    config.spatial_pool_mode = mode
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    model = LlavaNextVideoForConditionalGeneration(config).eval()
    run, visual_tokens, described = _vision_call(model.config.model_type, model, {"video": True})
    counted = _counted(run)
    exact = model_flops(model.config, visual_tokens, 0, **described)["prefill"]
    assert exact.vision + exact.projector == pytest.approx(counted, rel=1e-9)
    average = model_flops(tiny("llava_next_video").config, visual_tokens, 0, **described)
    assert (exact.projector > average["prefill"].projector) is (mode == "conv")


@pytest.mark.parametrize("grid", [(1, 4, 6), (1, 8, 4), (2, 6, 10), (3, 2, 2), (1, 12, 14)])
@pytest.mark.parametrize("window_size", [56, 84, 112])
def test_qwen2_5_vl_windows_follow_the_model_partition(grid, window_size):
    """The windows (edge windows smaller, padded ones dropped) are the model's own partition."""
    from transformers.vision_utils import get_vision_window_index

    vision = tiny("qwen2_5_vl").config.vision_config
    vision.window_size = window_size
    _, cu = get_vision_window_index(
        torch.tensor([grid]), vision.spatial_merge_size, window_size, vision.patch_size
    )
    assert window_lengths(grid, vision) == (cu[1:] - cu[:-1]).tolist()


@pytest.mark.parametrize("family", ["llava", "llava_head_dim", "gemma3", "qwen3_vl_moe"])
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
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        vocab_size=32064,
    )
    vision = dict(
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=24,
        num_attention_heads=16,
        image_size=336,
        patch_size=14,
    )
    return _llava_config(text, vision)  # no weights built


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


@pytest.mark.parametrize("experts", ["grouped_mm", "batched_mm", "eager"])
def test_moe_counts_routed_experts_only(experts):
    """Every experts kernel of Qwen3-VL-MoE computes only the top-k routed experts per token
    (plus the router): the default grouped_mm, batched_mm and the per-expert loop alike."""
    model = tiny("qwen3_vl_moe", attn="eager")
    model.set_experts_implementation(experts)
    text = model.config.text_config
    embeds = torch.randn(1, 12, text.hidden_size)
    counted = _counted(lambda: model.model.language_model(inputs_embeds=embeds))
    exact = model_flops(model.config, 0, 12, logits="all", vision=False)["prefill"]
    assert exact.attention + exact.mlp == pytest.approx(counted, rel=1e-9)
    d, experts_per_token = text.hidden_size, text.num_experts_per_tok
    routed = 12 * (
        2 * d * text.num_experts + experts_per_token * 6 * d * text.moe_intermediate_size
    )
    assert exact.mlp == text.num_hidden_layers * routed  # not all 4 experts densely


def test_missing_descriptions_and_bad_inputs():
    qwen25 = tiny("qwen2_5_vl").config
    with pytest.raises(ValueError, match=r"windowed vision tower .* pass grids"):
        model_flops(qwen25, 6, 4)
    lm_only = model_flops(qwen25, 6, 4, vision=False)["prefill"]
    assert lm_only.vision == lm_only.projector == 0.0 and lm_only.attention > 0
    for bad, match in [
        ({"grids": [(1, 4, 4)]}, "grids make 4 visual tokens"),
        ({"grids": [(1, 4, 6), (1, 2, 2)]}, "2 rows for 1 images"),
        ({"grids": [(1, 3, 8)]}, "multiples of spatial_merge_size"),
        ({"grids": [(0, 4, 6)]}, "three positive ints"),
        ({"videos": 1, "images": 0}, "Qwen videos: pass grids"),
    ]:
        config = qwen25 if "grids" in bad else tiny("qwen3_vl").config
        with pytest.raises(ValueError, match=match):
            model_flops(config, 6, 4, **bad)
    llava = tiny("llava").config
    for bad, match in [
        ({"visual_tokens": -1}, "visual_tokens"),
        ({"text_tokens": 2.5}, "text_tokens"),
        ({"decode_steps": -2}, "decode_steps"),
        ({"kept_visual_tokens": 9}, "exceeds"),
        ({"logits": "some"}, "logits"),
        ({"tiles_per_image": 3}, "tiles_per_image"),
        ({"images": 0}, "images"),
        ({"videos": 1}, "'llava' has no video input"),
        ({"frames": 4}, "frames applies to"),
        ({"grids": [(1, 2, 2)]}, "grids apply to"),
    ]:
        args = {"visual_tokens": 4, "text_tokens": 3, **bad}
        with pytest.raises(ValueError, match=match):
            model_flops(llava, args.pop("visual_tokens"), args.pop("text_tokens"), **args)
    next_config = tiny("llava_next").config
    with pytest.raises(ValueError, match="2 counts for 1 images"):
        model_flops(next_config, 4, 3, tiles_per_image=[2, 3])
    bogus = LlavaConfig()
    bogus.model_type = "blip"
    with pytest.raises(ValueError, match="supported: llava"):
        model_flops(bogus, 4, 3)
