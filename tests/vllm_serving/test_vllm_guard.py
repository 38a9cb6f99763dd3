"""The registry guard in vLLM's own registry and model config (no engine is started).

vLLM builds a ``ModelConfig`` for the bundled demo checkpoint and resolves its architecture the
way the front end and the engine do: with ``model_impl="auto"`` the served name resolves to
visprune's class and the guard lets it through; with ``model_impl="transformers"`` vLLM resolves
it to its Transformers backend, which visprune does not prune, and the config is refused.
"""

from __future__ import annotations

import pytest

from visprune.demo.run import bundled_checkpoint
from visprune.integrations.vllm import SERVED_ARCHITECTURES, register

OVERRIDE = {"visprune": {"method": "divprune", "budget": 7, "positions": "compact"}}


def model_config(model_impl: str):
    from vllm.config import ModelConfig

    return ModelConfig(
        model=str(bundled_checkpoint()),
        model_impl=model_impl,
        hf_overrides=OVERRIDE,
        dtype="float32",
        max_model_len=256,
    )


@pytest.fixture(scope="module")
def registry():
    from vllm import ModelRegistry

    register()
    return ModelRegistry


def test_the_served_architecture_resolves_to_the_visprune_class(registry):
    config = model_config("auto")
    model_cls, architecture = registry.resolve_model_cls(config.architectures, config)
    assert architecture == "LlavaForConditionalGeneration"
    served = f"{model_cls.__module__}:{model_cls.__qualname__}"
    assert served == SERVED_ARCHITECTURES[architecture]
    assert registry.inspect_model_cls(config.architectures, config)[1] == architecture


def test_the_transformers_backend_is_refused(registry):
    with pytest.raises(ValueError, match=r"as 'Transformers\w+'.*does not prune"):
        model_config("transformers")
