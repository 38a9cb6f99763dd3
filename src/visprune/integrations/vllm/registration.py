"""How a pruned family registers with vLLM: one builder pair that gives vLLM's own processing
info and processor without the override and the family's pruned ones with it. Imports vLLM
(engine processes only)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from vllm.multimodal import MULTIMODAL_REGISTRY

from .settings import settings_of


def register_pruned_processing(
    *,
    info: Callable[[Any], Any],
    processor: Callable[[Any, Any], Any],
    dummy_inputs: type,
    pruned_info: type,
    pruned_processor: type,
    refuse: Callable[[Any], None] | None = None,
):
    """The class decorator that registers a pruned model's multimodal processing.

    Without ``hf_config.visprune`` vLLM gets exactly what it registers for the family; with it,
    the pruned info and processor. The model class learns its pruned parts
    (``visprune_parts``), which it checks against the installed vLLM at engine start.

    Parameters
    ----------
    info : callable
        ``ctx -> info``: vLLM's processing info of the family (its class or its builder).
    processor : callable
        ``(info, dummy_inputs) -> processor``: vLLM's multimodal processor (class or builder).
    dummy_inputs : type
        vLLM's dummy-inputs builder of the family (the same pruned or not).
    pruned_info : type
        The family's pruned processing info.
    pruned_processor : type
        The family's pruned multimodal processor.
    refuse : callable, optional
        ``ctx -> None``, run with the override before the pruned info is built: raises
        ``ValueError`` where the family's config is one the plugin cannot prune.
    """

    def build_info(ctx):
        if settings_of(ctx.get_hf_config()) is None:
            return info(ctx)
        if refuse is not None:
            refuse(ctx)
        return pruned_info(ctx)

    def build_processor(built_info, dummy):
        if isinstance(built_info, pruned_info):
            return pruned_processor(built_info, dummy)
        return processor(built_info, dummy)

    register = MULTIMODAL_REGISTRY.register_processor(
        build_processor, info=build_info, dummy_inputs=dummy_inputs
    )

    def decorate(model_cls: type) -> type:
        model_cls.visprune_parts = (pruned_info, pruned_processor)
        return register(model_cls)

    return decorate
