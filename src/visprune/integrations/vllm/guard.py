"""The check that an override never goes unserved: a ``visprune`` override on a model that vLLM
would run with anything but a visprune class raises, at engine start, instead of serving the
model unpruned."""

from __future__ import annotations

import functools
from typing import Any

from .settings import OVERRIDE_KEY, settings_of

_GUARDED = "_visprune_guarded"


def is_served(registry: Any, architecture: str) -> bool:
    """Whether ``architecture`` resolves to a class of this plugin in vLLM's registry."""
    from . import SERVED_ARCHITECTURES

    entry = registry.models.get(architecture) if architecture in SERVED_ARCHITECTURES else None
    module = getattr(entry, "module_name", None) or getattr(
        getattr(entry, "model_cls", None), "__module__", ""
    )
    return module.startswith(__package__)


def check_served(registry: Any, architecture: str, model_config: Any) -> None:
    """Raise when ``model_config`` asks for pruning that ``architecture`` would not do.

    The override is parsed here too, so a bad method or budget fails before any weight loads.
    """
    from . import SERVED_ARCHITECTURES, UNSERVED_STAGES

    settings = settings_of(model_config.hf_config)
    if settings is None:
        return
    why = UNSERVED_STAGES.get(architecture, {}).get(settings.method.stage)
    if why is not None:
        raise ValueError(
            f"visprune: {settings.method.name} is a {settings.method.stage!r}-stage method, which "
            f"{architecture} cannot serve: {why}. Serve a method that works on the projected "
            "tokens, or prune this model with visprune.apply in transformers."
        )
    if not is_served(registry, architecture):
        impl = getattr(model_config, "model_impl", "auto")
        raise ValueError(
            f"visprune: hf_overrides[{OVERRIDE_KEY!r}] is set, but vLLM would serve this model "
            f"as {architecture!r} (model_impl={impl!r}), which the visprune plugin does not "
            f"prune; served architectures: {', '.join(SERVED_ARCHITECTURES)} with vLLM's own "
            "model code (model_impl='auto' or 'vllm'). Remove the override to serve it unpruned."
        )


def guard_registry(registry: Any) -> None:
    """Wrap ``inspect_model_cls`` (front end) and ``resolve_model_cls`` (engine) of vLLM's model
    registry instance with :func:`check_served`. Idempotent; models without the override are
    resolved exactly as before."""
    if getattr(registry, _GUARDED, False):
        return
    for name in ("inspect_model_cls", "resolve_model_cls"):
        original = getattr(registry, name)

        @functools.wraps(original)
        def checked(architectures, model_config, *args, _original=original, **kwargs):
            result = _original(architectures, model_config, *args, **kwargs)
            check_served(registry, result[1], model_config)
            return result

        setattr(registry, name, checked)
    setattr(registry, _GUARDED, True)
