"""Every method the plugin serves selects, in vLLM's Qwen2.5-VL and Qwen3-VL code, the tokens
``visprune.apply`` selects in transformers (no engine: the plugin's selection runs on the
features transformers' tower gives, with the prompt text the processor carries).

The end-to-end tests (test_vllm_qwen.py) serve three methods through engines; this covers the
rest cheaply: per image and per video temporal patch group, the kept rows and their M-RoPE
offsets equal the transformers selection.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

import visprune
from qwen_serving import qwen_inputs
from tiny_qwen import qwen_requests, write_tiny_qwen
from visprune.integrations.vllm.mrope import OFFSET_COLUMNS, decode_offsets
from visprune.integrations.vllm.qwen import QwenPrunedModelMixin
from visprune.integrations.vllm.score_layer import check_scores
from visprune.integrations.vllm.settings import parse_settings
from visprune.integrations.vllm.text import text_after_images
from visprune.registry import METHODS

BUDGET = 0.4


def served_methods() -> list[str]:
    """Every registered method the plugin serves on Qwen-VL (the others are refused at engine
    start: in-LLM methods everywhere, CLS-attention ones on towers without a CLS token)."""
    served = []
    for name in METHODS.names():
        try:
            settings = parse_settings({"method": name, "budget": BUDGET})
            check_scores("Qwen2_5_VLForConditionalGeneration", None, settings.method)
        except ValueError:
            continue
        served.append(name)
    return served


@pytest.fixture(scope="module", params=["qwen2_5_vl", "qwen3_vl"])
def family(request, tmp_path_factory):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    directory = tmp_path_factory.mktemp(request.param)
    write_tiny_qwen(request.param, directory)
    model = AutoModelForImageTextToText.from_pretrained(directory).eval()
    requests = qwen_requests(request.param, 2, video=False) + qwen_requests(
        request.param, 2, video=True
    )
    inputs = [qwen_inputs(AutoProcessor.from_pretrained(directory), r) for r in requests]
    return request.param, model, inputs


def plugin_model(family: str, model, settings):
    """The plugin's model mixin over transformers' config and embedding table."""
    if family == "qwen3_vl":
        from visprune.integrations.vllm.qwen3_vl import runs
    else:
        from visprune.integrations.vllm.qwen2_5_vl import runs

    plugin = QwenPrunedModelMixin()
    plugin.runs = runs
    plugin.config = model.config
    plugin.visprune = settings
    plugin.language_model = SimpleNamespace(
        embed_input_ids=model.get_input_embeddings(), parameters=model.parameters
    )
    return plugin


def features(model, inputs: dict, kind: str):
    """The tower's merged features of the request's one image or video ``(n, d)`` and grid."""
    pixels = inputs["pixel_values" if kind == "image" else "pixel_values_videos"]
    grid = inputs[f"{kind}_grid_thw"]
    encode = model.model.get_image_features if kind == "image" else model.model.get_video_features
    with torch.no_grad():
        output = encode(pixels, grid)
    return output.pooler_output[0], grid[0].tolist()


@pytest.mark.parametrize("method", served_methods())
def test_the_plugin_keeps_what_visprune_apply_keeps(family, method):
    name, model, inputs = family
    config = model.config
    settings = parse_settings({"method": method, "budget": BUDGET})
    plugin = plugin_model(name, model, settings)
    merge = config.vision_config.spatial_merge_size
    for request in inputs:
        kind = "video" if "pixel_values_videos" in request else "image"
        embeddings, grid = features(model, request, kind)
        t_step = 1.0
        if name == "qwen2_5_vl" and kind == "video":
            seconds = float(request["second_per_grid_ts"][0])
            t_step = seconds * config.vision_config.tokens_per_second
        ids = request["input_ids"][0].tolist()
        text = torch.tensor(text_after_images(ids, [config.image_token_id, config.video_token_id]))
        (kept,) = plugin._kept_items(
            [embeddings], [grid], [t_step], kind, [text] if settings.uses_text else None
        )
        handle = visprune.apply(model, method, budget=BUDGET)
        try:
            with torch.no_grad():
                model(**request)
            selections = list(handle.selections)
        finally:
            handle.remove()
        runs = plugin.runs(kind, grid, merge, t_step)
        offsets = torch.cat([run.offsets() for run in runs])
        frame = runs[0].per_frame
        rows = torch.cat([s.kept + number * frame for number, s in enumerate(selections)])
        assert len(selections) == sum(run.frames for run in runs)
        assert torch.allclose(kept[:, :-OFFSET_COLUMNS], embeddings[rows], atol=1e-5)
        assert torch.equal(decode_offsets(kept[:, -OFFSET_COLUMNS:]), offsets[rows])


def test_every_pre_llm_method_is_served():
    assert {"cdpruner", "divprune", "otprune", "random", "rediprune", "resprune"} <= set(
        served_methods()
    )
    assert {"trimtokenator", "uniform"} <= set(served_methods())
