"""The seams into transformers: break each one on purpose and visprune raises, never runs unpruned.

Each test moves one seam the way a transformers release could (a renamed cache keyword, an
encoder output that bypasses the recorded function, a language model called without its hooks,
a prompt prefilled in chunks) and asserts the error, not a quiet full-length run.
"""

from __future__ import annotations

import inspect
import re
import types
import warnings
from pathlib import Path

import pytest
import tomllib
import torch

import visprune
from tiny_vlms import GENERATE, inputs, tiny
from visprune import compat
from visprune.compat import PruningNotApplied

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


@pytest.mark.tested_range
def test_declared_dependency_range_is_the_tested_range():
    """pyproject's bound: lower = the oldest tested release, upper = the next untested minor."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    spec = next(d for d in project["project"]["dependencies"] if d.startswith("transformers"))
    low, high = compat.TESTED_RANGE
    major, minor = (int(part) for part in high.split(".")[:2])
    assert re.sub(r"\s", "", spec) == f"transformers>={low.removesuffix('.0')},<{major}.{minor + 1}"


@pytest.mark.parametrize(
    ("version", "tested"),
    [
        (compat.TESTED_RANGE[0], True),
        (compat.TESTED_RANGE[1], True),
        ("5.24.3", True),
        ("5.25.4", True),
        ("5.18.2", False),
        ("5.26.0", False),
        ("6.0.0.dev0", False),
    ],
)
def test_tested_range(version, tested):
    assert compat.in_tested_range(version) is tested


def test_apply_warns_once_outside_the_tested_range(monkeypatch):
    monkeypatch.setattr(compat, "transformers_version", lambda: "5.99.0")
    monkeypatch.setattr(compat, "_warned", set())
    model = tiny("llava")
    with pytest.warns(UserWarning, match=r"tested with transformers .* 5\.99\.0 is installed"):
        visprune.apply(model, "divprune", 0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        visprune.apply(model, "divprune", 0.5)


@pytest.mark.tested_range
def test_installed_version_is_tested_without_warning():
    assert compat.in_tested_range()
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        visprune.apply(tiny("llava"), "divprune", 0.5)


def test_error_outside_the_range_names_the_version_and_what_to_install(monkeypatch):
    monkeypatch.setattr(compat, "transformers_version", lambda: "5.99.0")
    message = str(PruningNotApplied("something moved"))
    assert "5.99.0" in message
    assert "something moved" in message and "install a version in that range" in message
    assert f"pip install '{compat.requirement()}'" in message


def test_install_advice_admits_every_patch_of_the_newest_tested_minor():
    """The advice must allow what ``in_tested_range`` accepts (5.25.x), and nothing newer."""
    requirement = compat.requirement()
    low, high = compat.TESTED_RANGE
    major, minor = (int(part) for part in high.split(".")[:2])
    assert requirement == f"transformers>={low.removesuffix('.0')},<{major}.{minor + 1}"
    assert f"<={high}" not in requirement


@pytest.mark.tested_range
def test_error_inside_the_range_does_not_advise_another_transformers():
    message = str(PruningNotApplied("something moved"))
    assert compat.transformers_version() in message and "something moved" in message
    assert "in the tested range" in message and "install" not in message


def test_usage_error_says_what_to_change_not_what_to_install(monkeypatch):
    for version in (compat.TESTED_RANGE[1], "5.99.0"):
        monkeypatch.setattr(compat, "transformers_version", lambda v=version: v)
        message = str(PruningNotApplied("leave out cache_implementation", usage=True))
        assert "leave out cache_implementation" in message
        assert "install" not in message and "tested range" not in message


# ------------------------------------------------------------------------ broken on purpose
def _pruned(family: str):
    """A tiny ``family`` model with DivPrune applied (half the visual tokens) and its inputs."""
    model = tiny(family)
    data = inputs(family, model)
    visprune.apply(model, "divprune", 0.5)
    return model, data


@pytest.mark.parametrize("family", ["llava", "qwen2_5_vl", "gemma3"])
def test_cache_under_an_unknown_keyword_raises(family):
    model = tiny(family)
    data = inputs(family, model)

    def rename(module, args, kwargs):
        for keyword in compat.CACHE_KEYWORDS:
            if kwargs.get(keyword) is not None:
                kwargs["kv_store"] = kwargs.pop(keyword)
        return args, kwargs

    # Registered before visprune's hook, so visprune sees what a release that renamed it sends.
    model.model.language_model.register_forward_pre_hook(rename, with_kwargs=True)
    visprune.apply(model, "divprune", 0.5)
    with pytest.raises(PruningNotApplied, match="'kv_store'"):
        model.generate(**data, **GENERATE)


@pytest.mark.parametrize("family", ["llava", "llava_next", "qwen2_5_vl", "gemma3"])
@pytest.mark.parametrize("call", ["forward", "generate"])
def test_encoder_output_that_bypasses_visprune_raises(family, call):
    """A release that encodes through another function than the one visprune wraps."""
    model = tiny(family)
    data = inputs(family, model)
    handle = visprune.apply(model, "divprune", 0.5)
    base = model.model
    base.get_image_features = types.MethodType(type(base).get_image_features, base)
    with pytest.raises(PruningNotApplied, match="did not pass through"):
        if call == "forward":
            model(**data)
        else:
            model.generate(**data, **GENERATE)
    assert handle.selections == []


def test_ready_encoder_outputs_from_before_apply_raise():
    model = tiny("llava")
    data = inputs("llava", model)
    if "mm_encoder_outputs" not in inspect.signature(type(model).forward).parameters:
        pytest.skip("this transformers release has no mm_encoder_outputs")
    outputs = {"image": model.model.get_image_features(data.pop("pixel_values"))}
    visprune.apply(model, "divprune", 0.5)
    with pytest.raises(PruningNotApplied, match="mm_encoder_outputs must be computed"):
        model(**data, mm_encoder_outputs=outputs)


class _HooklessCall(torch.nn.Module):
    """Calls a module's forward directly, so its hooks never run (a moved seam)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def get_input_embeddings(self):
        return self.inner.get_input_embeddings()

    def forward(self, *args, **kwargs):
        return self.inner.forward(*args, **kwargs)


def test_prefill_that_skips_the_language_model_hook_raises():
    model, data = _pruned("llava")
    model.model.language_model = _HooklessCall(model.model.language_model)
    with pytest.raises(PruningNotApplied, match="without its language model receiving"):
        model(**data)


def test_language_model_without_inputs_embeds_raises():
    model, data = _pruned("llava")

    def to_ids(module, args, kwargs):
        kwargs.pop("inputs_embeds")
        kwargs["input_ids"] = data["input_ids"]
        return args, kwargs

    hooks = model.model.language_model._forward_pre_hooks
    handle = model.model.language_model.register_forward_pre_hook(to_ids, with_kwargs=True)
    hooks.move_to_end(handle.id, last=False)  # runs before visprune's hook
    with pytest.raises(PruningNotApplied, match="input_ids instead of inputs_embeds"):
        model(**data)


def test_placeholders_in_a_step_with_a_cache_raise():
    """A prompt prefilled in chunks: the second chunk carries image tokens on a cache."""
    model, data = _pruned("llava")
    ids = data["input_ids"]
    first = int((ids[0] == model.config.image_token_id).nonzero()[0])
    out = model(input_ids=ids[:, :first], attention_mask=data["attention_mask"][:, :first])
    with pytest.raises(ValueError, match="prompt arrives in chunks"):
        model(
            input_ids=ids[:, first:],
            pixel_values=data["pixel_values"],
            attention_mask=data["attention_mask"],
            past_key_values=out.past_key_values,
        )


def test_cache_argument_follows_the_forward_signature():
    class New:
        def forward(self, input_ids=None, cache=None): ...

    class Old:
        def forward(self, input_ids=None, past_key_values=None): ...

    assert compat.cache_argument(New(), "c") == {"cache": "c"}
    assert compat.cache_argument(Old(), "c") == {"past_key_values": "c"}
    model = tiny("llava")
    data = inputs("llava", model)
    cache = compat.output_cache(model(**data, use_cache=True))
    assert compat.cache_length(cache) == data["input_ids"].shape[1]
    keyword = next(iter(compat.cache_argument(model, cache)))
    assert keyword in compat.CACHE_KEYWORDS


def test_gemma3_without_its_mask_function_raises(monkeypatch):
    """A release whose Gemma 3 no longer builds its masks through create_masks_for_generate."""
    model, data = _pruned("gemma3")
    monkeypatch.delattr(type(model), "create_masks_for_generate")
    with pytest.raises(PruningNotApplied, match="create_masks_for_generate"):
        model(**data)


def test_gemma3_masks_of_an_unknown_form_raise(monkeypatch):
    """A mask function that returns something visprune cannot check is refused."""
    model, data = _pruned("gemma3")

    def unknown(config, inputs_embeds, attention_mask, cache, position_ids, **kwargs):
        return object()

    monkeypatch.setattr(type(model), "create_masks_for_generate", staticmethod(unknown))
    with pytest.raises(PruningNotApplied, match="not a dict of 4-D masks"):
        model(**data)


def test_key_padding_mask_of_mask_dicts():
    """Any mask of a dict holds the padding; SDPA leaves out masks it needs not (no padding)."""
    padding = torch.tensor([[0, 1, 1, 1]])
    causal = torch.ones(4, 4, dtype=torch.bool).tril() & padding.bool()
    sliding = causal & ~torch.ones(4, 4, dtype=torch.bool).tril(-2)
    built = {"full_attention": None, "sliding_attention": sliding[None, None]}
    assert torch.equal(compat.key_padding_mask(built, 4), padding)
    eager = torch.zeros(1, 1, 4, 4).masked_fill(~causal, torch.finfo(torch.float32).min)
    assert torch.equal(compat.key_padding_mask({"full_attention": eager}, 4), padding)
    assert compat.key_padding_mask({"full_attention": None, "sliding_attention": None}, 4) is None
    with pytest.raises(ValueError, match="2-D attention mask"):
        compat.key_padding_mask({"full_attention": object()}, 4)
