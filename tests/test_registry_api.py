"""The registry and the public entry points: names, classes, parameters, import weight."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest
import torch

import visprune
from conftest import (
    METHOD_NAMES,
    NO_BUDGET,
    cls_attention_of,
    layer_kwargs,
    make_tokens,
    needs_cls_attention,
    text_kwargs,
)
from visprune.registry import METHODS, Registry, UnknownNameError

PAPER_METHODS = ["divprune", "otprune", "rediprune", "resprune", "trimtokenator"]
BASELINES = ["random", "uniform", "keepall"]
PRE_LLM = ["cdpruner", "vispruner", "visionzip"]
LAYER_METHODS = ["fastv", "pdrop", "dart"]
CLASSES = {
    "divprune": visprune.DivPrune,
    "otprune": visprune.OTPrune,
    "rediprune": visprune.ReDiPrune,
    "resprune": visprune.ResPrune,
    "trimtokenator": visprune.TrimTokenator,
    "random": visprune.Random,
    "uniform": visprune.Uniform,
    "keepall": visprune.KeepAll,
    "cdpruner": visprune.CDPruner,
    "vispruner": visprune.VisPruner,
    "visionzip": visprune.VisionZip,
    "fastv": visprune.FastV,
    "pdrop": visprune.PyramidDrop,
    "dart": visprune.DART,
}
#: Non-default hyperparameters per method, for construction and round-trip tests.
PARAMS = {
    "divprune": {"budget": 64},
    "otprune": {"budget": 0.098, "gamma": 0.05},
    "rediprune": {"budget": 0.25, "alpha": 0.7, "tau": 0.1},
    "resprune": {"budget": 12, "alpha": 1.5},
    "trimtokenator": {"budget": 0.5},
    "random": {"budget": 8, "seed": 123},
    "uniform": {"budget": 0.111},
    "keepall": {},
    "cdpruner": {"budget": 64},
    "vispruner": {"budget": 0.25, "important_ratio": 0.75},
    "visionzip": {"budget": 64, "contextual_ratio": 0.25},
    "fastv": {"budget": 0.5, "layer": 3},
    "pdrop": {"budget": 288, "layers": (4, 8), "ratio": 0.25},
    "dart": {"budget": 128, "layer": 3, "image_pivots": 2, "text_pivots": 6},
}


def test_list_methods_order():
    """Paper methods first, then the baselines, then the published pre-LLM baselines and the
    methods that prune inside the language model."""
    assert visprune.list_methods() == PAPER_METHODS + BASELINES + PRE_LLM + LAYER_METHODS


def test_list_methods_returns_a_copy():
    """Mutating the returned list does not change the registry."""
    names = visprune.list_methods()
    names.append("bogus")
    assert "bogus" not in visprune.list_methods()


@pytest.mark.parametrize("name", PAPER_METHODS + BASELINES + PRE_LLM)
def test_get_method_builds_the_class_with_params(name):
    """``get_method(name, **params)`` returns an instance of the right class, params applied."""
    method = visprune.get_method(name, **PARAMS[name])
    assert type(method) is CLASSES[name]
    assert method.name == name
    for key, value in PARAMS[name].items():
        assert getattr(method, key) == value


@pytest.mark.parametrize("name", PAPER_METHODS + BASELINES + PRE_LLM)
def test_get_method_is_case_insensitive(name):
    """``"OTPrune"`` finds ``"otprune"``."""
    assert type(visprune.get_method(CLASSES[name].__name__)) is CLASSES[name]


@pytest.mark.parametrize("name", [m for m in METHOD_NAMES if m not in NO_BUDGET])
def test_get_method_on_instance_copies(name):
    """``get_method(instance, **params)`` returns a new instance with params applied."""
    original = visprune.get_method(name, budget=5)
    changed = visprune.get_method(original, budget=7)
    assert type(changed) is type(original)
    assert changed is not original
    assert original.budget == 5 and changed.budget == 7
    for key in PARAMS[name]:
        if key != "budget":
            assert getattr(changed, key) == getattr(original, key)
    same = visprune.get_method(original)
    assert same == original and same is not original


def test_instance_budget_is_used_by_select():
    """A method instance carries its budget; ``select`` with no budget uses it."""
    tokens = make_tokens((40, 8))
    method = visprune.get_method("divprune", budget=6)
    assert visprune.select(method, tokens).shape == (6,)
    assert method.select(tokens).shape == (6,)
    assert visprune.select(method, tokens, 0.5).shape == (20,)
    assert method.budget == 6, "select must not mutate the instance"


@pytest.mark.parametrize("name", PAPER_METHODS + BASELINES + PRE_LLM)
def test_params_round_trip_through_json(name):
    """``params()`` is JSON-serialisable and rebuilds an equal method."""
    method = visprune.get_method(name, **PARAMS[name])
    params = method.params()
    assert set(params) == {field.name for field in dataclasses.fields(method)}
    restored = visprune.get_method(name, **json.loads(json.dumps(params)))
    assert restored == method
    assert restored.params() == params


@pytest.mark.parametrize("name", [*PAPER_METHODS, *BASELINES, "cdpruner"])
def test_params_round_trip_gives_same_selection(name):
    """A method rebuilt from its JSON params selects the same tokens."""
    method = visprune.get_method(name, **PARAMS[name])
    restored = visprune.get_method(name, **json.loads(json.dumps(method.params())))
    tokens = make_tokens((50, 12))
    extra = text_kwargs(name, 12)
    assert torch.equal(
        visprune.select(method, tokens, **extra), visprune.select(restored, tokens, **extra)
    )


VISION_STAGE = {"rediprune", "vispruner", "visionzip"}
REQUIRES = {
    "rediprune": {"text"},
    "cdpruner": {"text"},
    "vispruner": {"cls_attention"},
    "visionzip": {"cls_attention", "vision_keys"},
}


@pytest.mark.parametrize("name", PAPER_METHODS + BASELINES + PRE_LLM)
def test_stage_and_context_declarations(name):
    """ReDiPrune, VisPruner and VisionZip run before the projector, the rest on LLM input;
    what each requires and uses; VisionZip alone merges."""
    cls = CLASSES[name]
    assert cls.stage == ("vision" if name in VISION_STAGE else "llm")
    assert cls.requires == frozenset(REQUIRES.get(name, set()))
    expected_uses = {
        "rediprune": {"text", "query"},
        "resprune": {"text"},
        "trimtokenator": {"text"},
        "cdpruner": {"text"},
        "vispruner": {"cls_attention"},
        "visionzip": {"cls_attention", "vision_keys", "cls_state"},
    }.get(name, set())
    assert cls.uses == frozenset(expected_uses)
    assert cls.merges == (name == "visionzip")


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_declarations_are_consistent(name):
    """Every method: a valid stage, ``requires`` within ``uses``, and the registry name."""
    cls = METHODS[name]
    assert cls.name == name
    assert cls.stage in {"vision", "llm", "layer"}
    assert cls.requires <= cls.uses
    assert issubclass(cls, visprune.Method)
    assert dataclasses.is_dataclass(cls)
    assert "budget" in {field.name for field in dataclasses.fields(cls)}


def test_import_does_not_load_heavy_dependencies():
    """``import visprune`` stays light: no transformers (nor optional extras)."""
    code = (
        "import sys, visprune; "
        "heavy = [m for m in ('transformers', 'matplotlib', 'lmms_eval') if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert result.stdout.strip() == ""


def test_public_api_exports():
    """The package exposes the documented entry points and every method class."""
    for attribute in ("select", "get_method", "list_methods", "METHODS", "Context", "Method"):
        assert hasattr(visprune, attribute)
    for cls in CLASSES.values():
        assert getattr(visprune, cls.__name__) is cls
    assert set(visprune.__all__) <= set(dir(visprune))


@pytest.mark.parametrize("name", [m for m in METHOD_NAMES if m not in NO_BUDGET])
def test_method_select_with_context_equals_api(name):
    """``Method.select(tokens, k, Context(...))`` is what ``visprune.select`` runs."""
    tokens = make_tokens((3, 30, 8))
    extra = layer_kwargs(name, tokens, **text_kwargs(name, 8, 3, shared=False))
    if needs_cls_attention(name):
        extra["cls_attention"] = cls_attention_of(tokens)
    through_api = visprune.select(name, tokens, 5, **extra)
    direct = visprune.get_method(name).select(tokens, 5, visprune.Context(**extra))
    assert torch.equal(through_api, direct)
    as_tuple = {key: tuple(value) if key == "text" else value for key, value in extra.items()}
    assert torch.equal(visprune.select(name, tokens, 5, **as_tuple), through_api)


# --- the Registry class --------------------------------------------------------------------------


def test_registry_registers_and_looks_up():
    """Decorator registration returns the class unchanged and keeps insertion order."""
    registry: Registry = Registry("widget")

    @registry.register("beta")
    class Beta:
        pass

    @registry.register("alpha")
    class Alpha:
        pass

    assert registry["beta"] is Beta and registry["alpha"] is Alpha
    assert registry.names() == ["beta", "alpha"]
    assert "alpha" in registry and "gamma" not in registry


def test_registry_rejects_duplicates():
    """A second registration under the same name raises and keeps the first."""
    registry: Registry = Registry("widget")

    @registry.register("thing")
    class First:
        pass

    with pytest.raises(ValueError, match=r"widget 'thing' is already registered"):

        @registry.register("thing")
        class Second:
            pass

    assert registry["thing"] is First


@pytest.mark.parametrize("name", ["Thing", "THING", "otPrune"])
def test_registry_rejects_non_lowercase_names(name):
    """Registry names are lowercase."""
    registry: Registry = Registry("widget")
    with pytest.raises(ValueError, match=rf"widget names are lowercase, got {name!r}"):
        registry.register(name)
    assert registry.names() == []


def test_registry_unknown_name_error():
    """Lookup errors are ``KeyError`` (and ``ValueError``) with the kind, names and a suggestion."""
    registry: Registry = Registry("widget")
    registry.register("sprocket")(object)
    with pytest.raises(UnknownNameError) as info:
        registry["sprockit"]
    assert isinstance(info.value, KeyError) and isinstance(info.value, ValueError)
    assert (
        str(info.value)
        == "unknown widget 'sprockit'; available: sprocket. Did you mean 'sprocket'?"
    )


def test_registry_unhashable_name():
    """Looking up an unhashable object is an unknown name, not a ``TypeError``."""
    with pytest.raises(KeyError, match="unknown method"):
        METHODS[["otprune"]]


def test_method_registry_is_shared():
    """``visprune.METHODS`` is the registry ``list_methods`` reads."""
    assert visprune.METHODS is METHODS
    assert METHODS.names() == visprune.list_methods()
