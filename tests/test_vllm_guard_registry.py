"""The vLLM guard checks what the registry resolves to, not what was asked for.

vLLM's registry may resolve a served architecture name to another implementation (its
Transformers backend with ``model_impl="transformers"``, a class another plugin registered) and
may resolve a list of names to a later one. These registries imitate that without vLLM, so the
checks run anywhere.
"""

from __future__ import annotations

import pytest

from visprune.integrations.vllm import SERVED_ARCHITECTURES
from visprune.integrations.vllm.guard import guard_registry
from visprune.integrations.vllm.settings import parse_settings, settings_of

LLAVA = "LlavaForConditionalGeneration"
LLAVA_NEXT = "LlavaNextForConditionalGeneration"
BACKEND = "TransformersMultiModalForCausalLM"


def model_class(target: str) -> type:
    """A class that stands for ``"module:Class"`` (its module and name, nothing else)."""
    module, name = target.split(":")
    return type(name, (), {"__module__": module, "__qualname__": name})


class Entry:
    def __init__(self, target: str):
        self.module_name, self.class_name = target.split(":")


class Registry:
    """vLLM's registry after ``register()``: the served names point at visprune's classes.

    ``routes`` maps a requested architecture to the ``(class target, architecture)`` the registry
    resolves it to; anything else resolves to its own registered entry. The first requested name
    with an entry (or a route) wins, as in vLLM.
    """

    def __init__(self, routes: dict[str, tuple[str, str]] | None = None):
        self.models = {name: Entry(target) for name, target in SERVED_ARCHITECTURES.items()}
        self.models["Qwen2VLForConditionalGeneration"] = Entry(
            "vllm.model_executor.models.qwen2_vl:Qwen2VLForConditionalGeneration"
        )
        self.routes = routes or {}

    def _resolve(self, architectures):
        for name in architectures:
            if name in self.routes:
                target, resolved = self.routes[name]
                return model_class(target), resolved
            if name in self.models:
                entry = self.models[name]
                return model_class(f"{entry.module_name}:{entry.class_name}"), name
        raise ValueError(f"Model architectures {architectures} are not supported")

    def inspect_model_cls(self, architectures, model_config):
        _, resolved = self._resolve(architectures)
        return object(), resolved  # vLLM's _ModelInfo: no class in it

    def resolve_model_cls(self, architectures, model_config):
        return self._resolve(architectures)


class Config:
    def __init__(self, **attributes):
        self.__dict__.update(attributes)


def pruned(model_impl: str = "auto", **override) -> Config:
    override = override or {"method": "divprune", "budget": 7}
    return Config(hf_config=Config(visprune=override), model_impl=model_impl)


def calls(registry):
    return (registry.inspect_model_cls, registry.resolve_model_cls)


def test_a_served_name_resolved_to_the_transformers_backend_raises():
    """``model_impl="transformers"``: vLLM resolves a LLaVA checkpoint to its Transformers
    backend, which visprune does not prune; the guard names what it resolved to."""
    registry = Registry({LLAVA: (f"vllm.model_executor.models.transformers:{BACKEND}", BACKEND)})
    guard_registry(registry)
    for call in calls(registry):
        with pytest.raises(ValueError, match=rf"as '{BACKEND}'.*does not prune"):
            call([LLAVA], pruned("transformers"))


def test_the_guard_follows_the_name_the_registry_picked():
    """Of several names the registry resolves the first it knows: an unserved first name
    followed by a served one is served, and the reverse raises."""
    registry = Registry()
    guard_registry(registry)
    for call in calls(registry):
        assert call(["SomeUnknownForCausalLM", LLAVA], pruned())[1] == LLAVA
        with pytest.raises(ValueError, match="Qwen2VLForConditionalGeneration"):
            call(["Qwen2VLForConditionalGeneration", LLAVA], pruned())


@pytest.mark.parametrize(
    "target",
    [
        "vllm.model_executor.models.llava:LlavaForConditionalGeneration",
        SERVED_ARCHITECTURES[LLAVA_NEXT],  # a visprune class, but not the one for LLaVA
    ],
    ids=["vllm-own", "other-visprune-class"],
)
def test_a_served_name_resolved_to_another_implementation_raises(target):
    """The registry's entry for the name is visprune's, yet it resolves the name to another
    class: the engine would build that class unpruned, so ``resolve_model_cls`` raises."""
    registry = Registry({LLAVA: (target, LLAVA)})
    guard_registry(registry)
    with pytest.raises(ValueError, match=r"does not prune"):
        registry.resolve_model_cls([LLAVA], pruned())
    # Without the override nothing is checked.
    registry.resolve_model_cls([LLAVA], Config(hf_config=Config(), model_impl="auto"))


def test_the_served_classes_pass():
    registry = Registry()
    guard_registry(registry)
    for name in SERVED_ARCHITECTURES:
        model_cls, resolved = registry.resolve_model_cls([name], pruned())
        assert resolved == name
        assert f"{model_cls.__module__}:{model_cls.__qualname__}" == SERVED_ARCHITECTURES[name]
        assert registry.inspect_model_cls([name], pruned())[1] == name


@pytest.mark.parametrize(
    "raw",
    [
        {"method": "divprune", "budget": 7, "positions": "compact"},
        '{"method": "otprune", "budget": 0.25, "positions": "compact", "gamma": 0.5}',
    ],
)
def test_an_explicit_compact_positions_is_accepted(raw):
    """``"positions": "compact"`` is what vLLM does anyway: accepted, and not handed to the
    method as a hyperparameter."""
    settings = parse_settings(raw)
    assert settings.method.name in ("divprune", "otprune")
    assert settings.num_keep(64) in (7, 16)
    if isinstance(raw, dict):
        assert settings_of(Config(visprune=raw)).method == settings.method
        registry = Registry()
        guard_registry(registry)
        for call in calls(registry):
            assert call([LLAVA], pruned(**raw))[1] == LLAVA
