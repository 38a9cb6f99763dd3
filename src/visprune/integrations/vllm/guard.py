"""The check that an override never goes unserved: a ``visprune`` override on a model that vLLM
would run with anything but a visprune class raises, at engine start, instead of serving the
model unpruned."""

from __future__ import annotations

import contextlib
import functools
import threading
from typing import Any

from .score_layer import check_scores
from .settings import OVERRIDE_KEY, settings_of

_GUARDED = "_visprune_guarded"
_BUILDING = threading.local()


@contextlib.contextmanager
def building_served_model():
    """While a served model builds its parts. Some (Qwen-VL) build their language model through
    the registry with the model's own config, override included: that language model runs
    inside the pruned model, so its resolution is not checked."""
    depth = getattr(_BUILDING, "depth", 0)
    _BUILDING.depth = depth + 1
    try:
        yield
    finally:
        _BUILDING.depth = depth


def is_served(registry: Any, architecture: str, model_cls: Any = None) -> bool:
    """Whether ``architecture`` resolves to a class of this plugin in vLLM's registry.

    ``model_cls``, when given, is the class the registry resolved ``architecture`` to: it must be
    the very class this plugin serves under that name (vLLM may resolve a name to another
    implementation than its registry entry, e.g. its Transformers backend).
    """
    from . import SERVED_ARCHITECTURES

    entry = registry.models.get(architecture) if architecture in SERVED_ARCHITECTURES else None
    module = getattr(entry, "module_name", None) or getattr(
        getattr(entry, "model_cls", None), "__module__", ""
    )
    if not module.startswith(__package__):
        return False
    if model_cls is None:
        return True
    name = f"{getattr(model_cls, '__module__', '')}:{getattr(model_cls, '__qualname__', '')}"
    return name == SERVED_ARCHITECTURES[architecture]


def check_served(
    registry: Any, architecture: str, model_config: Any, model_cls: Any = None
) -> None:
    """Raise when ``model_config`` asks for pruning that ``architecture`` would not do.

    ``architecture`` is the name the registry resolved to and ``model_cls`` (when known) the class
    it resolved to. The override is parsed here too, so a bad method or budget fails before any
    weight loads.
    """
    from . import SERVED_ARCHITECTURES, SERVED_POSITIONS

    settings = settings_of(model_config.hf_config)
    if settings is None:
        return
    multimodal = getattr(model_config, "multimodal_config", None)
    if multimodal is not None and multimodal.is_multimodal_pruning_enabled():
        raise ValueError(
            "visprune: the override and vLLM's own video pruning (video_pruning_rate) are both "
            "set; serve with one of them."
        )
    served = SERVED_POSITIONS.get(architecture, "compact")
    if settings.positions not in (None, served):
        kind = "consecutive positions" if served == "compact" else "their original positions"
        raise ValueError(
            f"visprune: vLLM serves {architecture}'s kept tokens at {kind} "
            f'(positions="{served}"); positions={settings.positions!r} is not available there '
            f'(omit it or pass "{served}").'
        )
    check_scores(architecture, model_config.hf_config, settings.method)
    if not is_served(registry, architecture, model_cls):
        impl = getattr(model_config, "model_impl", "auto")
        served_as = repr(architecture) if model_cls is None else f"{architecture!r} ({model_cls!r})"
        raise ValueError(
            f"visprune: hf_overrides[{OVERRIDE_KEY!r}] is set, but vLLM would serve this model "
            f"as {served_as} (model_impl={impl!r}), which the visprune plugin does not "
            f"prune; served architectures: {', '.join(SERVED_ARCHITECTURES)} with vLLM's own "
            "model code (model_impl='auto' or 'vllm'). Remove the override to serve it unpruned."
        )


def guard_registry(registry: Any) -> None:
    """Wrap ``inspect_model_cls`` (front end) and ``resolve_model_cls`` (engine) of vLLM's model
    registry instance with :func:`check_served` on what they resolve to: the architecture name,
    and for ``resolve_model_cls`` the class the engine will build. Idempotent; models without the
    override are resolved exactly as before."""
    if getattr(registry, _GUARDED, False):
        return
    for name in ("inspect_model_cls", "resolve_model_cls"):
        original = getattr(registry, name)

        @functools.wraps(original)
        def checked(
            architectures,
            model_config,
            *args,
            _original=original,
            _class=name == "resolve_model_cls",
            **kwargs,
        ):
            result = _original(architectures, model_config, *args, **kwargs)
            if getattr(_BUILDING, "depth", 0):
                return result
            # inspect_model_cls returns vLLM's model info, which names no class.
            model_cls = result[0] if _class and isinstance(result[0], type) else None
            check_served(registry, result[1], model_config, model_cls)
            return result

        setattr(registry, name, checked)
    setattr(registry, _GUARDED, True)
