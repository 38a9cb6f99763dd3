"""The vLLM plugin's parts that need no vLLM: the override, the prompt text, the selection and
the registry guard (the end-to-end serving tests are in tests/vllm/, run by ``make test-vllm``)."""

from __future__ import annotations

import pytest
import torch

import visprune
from visprune.integrations.vllm import SERVED_ARCHITECTURES
from visprune.integrations.vllm.guard import check_served, guard_registry, is_served
from visprune.integrations.vllm.selection import select_rows
from visprune.integrations.vllm.settings import parse_settings, settings_of
from visprune.integrations.vllm.text import text_after_images, with_text
from visprune.methods import Context


def test_settings_build_the_method_with_its_hyperparameters():
    settings = parse_settings({"method": "otprune", "budget": 0.25, "gamma": 0.5})
    assert settings.method.name == "otprune" and settings.method.gamma == 0.5
    assert settings.num_keep(576) == 144 and settings.num_keep(64) == 16
    assert not settings.uses_text
    assert parse_settings('{"method": "rediprune", "budget": 7}').uses_text


def test_an_integer_budget_above_the_candidates_keeps_them_all():
    assert parse_settings({"method": "divprune", "budget": 100}).num_keep(64) == 64


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"method": "divprun", "budget": 7}, "Did you mean 'divprune'"),
        ({"method": "divprune", "budget": 0}, "budget must be positive"),
        ({"method": "divprune", "budget": 1.5}, r"fraction .* must be in \(0, 1\]"),
        ({"method": "divprune"}, "no budget"),
        ({"method": "divprune", "budget": 7, "gamma": 1}, "no parameter"),
        ({"method": "divprune", "budget": 7, "positions": "shuffled"}, "compact.* or .*original"),
        ({"budget": 7}, "names no method"),
        ({"method": "keepall"}, "keepall is not served"),
        ({"method": "KeepAll", "budget": 7}, "serve without the visprune override"),
        ("divprune", "not valid JSON"),
        (["divprune", 7], "must be a dict"),
    ],
)
def test_bad_overrides_raise_with_what_to_pass(raw, message):
    with pytest.raises(ValueError, match=message):
        parse_settings(raw)


class Config:
    def __init__(self, **attributes):
        self.__dict__.update(attributes)


def test_settings_of_a_config_without_the_override_is_none():
    assert settings_of(Config()) is None
    first = settings_of(Config(visprune={"method": "random", "budget": 3}))
    again = settings_of(Config(visprune={"budget": 3, "method": "random"}))
    assert first is again  # parsed once per distinct override


def test_text_after_the_last_image():
    assert text_after_images([5, 4, 6, 4, 7, 8], [4]) == [7, 8]
    assert text_after_images([5, 4], [4]) == []
    assert text_after_images([5, 6], [4]) == [5, 6]
    assert with_text("abc", [1, 2]) != with_text("abc", [1, 3])
    assert with_text("abc", [1, 2]).startswith("abc")


def test_select_rows_equals_method_select_per_image():
    generator = torch.Generator().manual_seed(0)
    candidates = [torch.randn(64, 16, generator=generator) for _ in range(3)]
    candidates.append(torch.randn(36, 16, generator=generator))
    embeddings = [torch.randn(len(c), 8, generator=generator) for c in candidates]
    texts = [torch.randn(m, 16, generator=generator) for m in (3, 0, 5, 2)]
    settings = parse_settings({"method": "rediprune", "budget": 7})
    rows = select_rows(settings, candidates, embeddings, texts)
    method = visprune.get_method("rediprune", budget=7)
    for tokens, embedded, text, kept in zip(candidates, embeddings, texts, rows, strict=True):
        keep = method.select(tokens, 7, Context(text=[text]))
        assert torch.equal(kept, embedded[keep])


def test_select_rows_checks_its_inputs():
    settings = parse_settings({"method": "divprune", "budget": 2})
    with pytest.raises(ValueError, match="candidates but"):
        select_rows(settings, [torch.randn(5, 4)], [torch.randn(6, 4)], None)
    with pytest.raises(ValueError, match="texts"):
        select_rows(settings, [torch.randn(5, 4)], [torch.randn(5, 4)], [])


class Entry:
    def __init__(self, module_name):
        self.module_name = module_name


class Registry:
    """The two methods of vLLM's model registry the guard wraps, resolving every name as is."""

    def __init__(self):
        self.models = {
            name: Entry(target.split(":")[0]) for name, target in SERVED_ARCHITECTURES.items()
        }
        self.models["Qwen2VLForConditionalGeneration"] = Entry(
            "vllm.model_executor.models.qwen2_vl"
        )

    def inspect_model_cls(self, architectures, model_config):
        return object(), architectures[0]

    def resolve_model_cls(self, architectures, model_config):
        return object(), architectures[0]


def model_config(**override):
    return Config(hf_config=Config(**override), model_impl="auto")


def test_the_guard_refuses_an_override_it_would_not_serve():
    registry = Registry()
    guard_registry(registry)
    guard_registry(registry)  # idempotent
    pruned = model_config(visprune={"method": "divprune", "budget": 7})
    for call in (registry.inspect_model_cls, registry.resolve_model_cls):
        assert call(["LlavaForConditionalGeneration"], pruned)[1] == "LlavaForConditionalGeneration"
        with pytest.raises(ValueError, match=r"Qwen2VLForConditionalGeneration.*does not prune"):
            call(["Qwen2VLForConditionalGeneration"], pruned)
        # Without the override nothing is checked.
        assert call(["Qwen2VLForConditionalGeneration"], model_config())[1].startswith("Qwen2VL")


def test_the_guard_serves_vision_stage_methods_on_every_architecture():
    registry = Registry()
    guard_registry(registry)
    vision = model_config(visprune={"method": "rediprune", "budget": 7})
    for served in SERVED_ARCHITECTURES:
        assert registry.inspect_model_cls([served], vision)[1] == served
        assert registry.resolve_model_cls([served], vision)[1] == served
    layer = model_config(visprune={"method": "fastv", "budget": 7})
    with pytest.raises(ValueError, match="fastv prunes inside the language model"):
        registry.inspect_model_cls(["LlavaNextForConditionalGeneration"], layer)


def test_a_served_name_overwritten_by_another_plugin_is_not_served():
    registry = Registry()
    registry.models["LlavaForConditionalGeneration"] = Entry("someone_else.llava")
    assert not is_served(registry, "LlavaForConditionalGeneration")
    with pytest.raises(ValueError, match="does not prune"):
        check_served(
            registry,
            "LlavaForConditionalGeneration",
            model_config(visprune={"method": "divprune", "budget": 7}),
        )


def test_a_bad_override_fails_in_the_guard_before_any_weight_loads():
    registry = Registry()
    guard_registry(registry)
    with pytest.raises(ValueError, match="Did you mean"):
        registry.inspect_model_cls(
            ["LlavaForConditionalGeneration"],
            model_config(visprune={"method": "divprun", "budget": 7}),
        )


@pytest.mark.parametrize(
    ("architecture", "positions", "message"),
    [
        ("LlavaForConditionalGeneration", "original", "consecutive positions"),
        ("Qwen2_5_VLForConditionalGeneration", "compact", "their original positions"),
        ("Qwen3VLForConditionalGeneration", "compact", "their original positions"),
    ],
)
def test_positions_must_be_the_architectures_own(architecture, positions, message):
    registry = Registry()
    for served in (positions, None):
        override = {"method": "divprune", "budget": 7}
        if served is not None:
            override["positions"] = served
        config = model_config(visprune=override)
        if served is None:
            check_served(registry, architecture, config)  # the model's own mode
        else:
            with pytest.raises(ValueError, match=message):
                check_served(registry, architecture, config)


def test_the_override_and_vllms_own_video_pruning_are_refused_together():
    registry = Registry()
    config = model_config(visprune={"method": "divprune", "budget": 7})
    for rate in (0.0, 0.5):
        config.multimodal_config = Config(is_multimodal_pruning_enabled=lambda rate=rate: rate > 0)
        if rate:
            with pytest.raises(ValueError, match="video_pruning_rate"):
                check_served(registry, "Qwen2_5_VLForConditionalGeneration", config)
        else:
            check_served(registry, "Qwen2_5_VLForConditionalGeneration", config)


def llava_like(tower: str, feature_layer=-2, strategy="default", **override):
    vision = Config(model_type=tower, num_hidden_layers=4)
    return Config(
        hf_config=Config(
            model_type="llava",
            vision_config=vision,
            vision_feature_layer=feature_layer,
            vision_feature_select_strategy=strategy,
            **override,
        ),
        model_impl="auto",
    )


@pytest.mark.parametrize("method", ["vispruner", "visionzip"])
def test_cls_methods_are_served_on_clip_llava_and_refused_elsewhere(method):
    registry = Registry()
    override = {"visprune": {"method": method, "budget": 7}}
    check_served(
        registry, "LlavaForConditionalGeneration", llava_like("clip_vision_model", **override)
    )
    refused = [
        ("LlavaForConditionalGeneration", llava_like("siglip_vision_model", **override)),
        ("LlavaForConditionalGeneration", llava_like("clip_vision_model", [-2, -1], **override)),
        ("LlavaForConditionalGeneration", llava_like("clip_vision_model", -2, "full", **override)),
        ("Qwen2_5_VLForConditionalGeneration", model_config(**override)),
        ("Gemma3ForConditionalGeneration", llava_like("siglip_vision_model", **override)),
    ]
    for architecture, config in refused:
        with pytest.raises(
            ValueError, match=rf"{method} cannot run on .*needs cls_attention.*e\.g\. divprune"
        ):
            check_served(registry, architecture, config)


def test_the_scoring_layer_follows_visprune_apply():
    from visprune.integrations.vllm.score_layer import ScoreLayer, score_layer

    def layer(feature_layer):
        return score_layer(llava_like("clip_vision_model", feature_layer).hf_config)

    assert layer(-2) == ScoreLayer(2, False)  # the output of layers[-2] of 4
    assert layer(-1) == ScoreLayer(3, False)
    assert layer(2) == ScoreLayer(1, False)  # hidden_states[2] is the output of layers[1]
    assert layer(0) == layer(-5) == ScoreLayer(0, True)  # the embeddings, read by layers[0]
    assert layer(5) is None and layer(-6) is None


def test_select_rows_places_merged_tokens_in_the_last_dropped_slots():
    settings = parse_settings({"method": "visionzip", "budget": 4})
    torch.manual_seed(0)
    tokens = torch.randn(1, 10, 8)
    scores = {
        "cls_attention": torch.rand(10, 2).softmax(0),
        "vision_keys": torch.randn(10, 4),
        "cls_state": torch.randn(8),
    }
    embeddings = tokens[0] * 2
    (rows,) = select_rows(
        settings, [tokens[0]], [embeddings], None, scores=[scores], project=lambda t: t * 2
    )
    ctx = Context(
        cls_attention=scores["cls_attention"].T,
        vision_keys=scores["vision_keys"],
        cls_state=scores["cls_state"],
    )
    kept, merged = settings.method.reduce(tokens[0], 4, ctx)
    assert rows.shape == (4, 8)
    dropped = [i for i in range(10) if i not in kept.tolist()]
    slots = dropped[-len(merged) :]
    order = sorted(
        [(int(i), embeddings[i]) for i in kept] + list(zip(slots, merged * 2, strict=True)),
        key=lambda p: p[0],
    )
    assert torch.equal(rows, torch.stack([row for _, row in order]))


def test_importing_the_plugin_imports_no_vllm():
    import subprocess
    import sys

    code = "import sys, visprune.integrations.vllm; assert 'vllm' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
