"""What a method needs from the model, and whether a family can supply it, checked at ``apply``.

A method declares its needs in ``Method.requires``: ``"text"`` (every adapter supplies the
prompt after the image) and the vision-tower scores of :data:`visprune.methods.context.VISION_NEEDS`
(``"cls_attention"``, ``"vision_keys"``), which an adapter supplies when its family names a
vision layer with a CLS token (``Adapter.score_layer``). A method that needs what the model
cannot supply fails here, at ``visprune.apply``, never in the middle of ``generate``.
"""

from __future__ import annotations

from typing import Any

from ..functional.score_layer import score_settings
from ..methods import Method
from ..methods.context import VISION_NEEDS
from ..registry import METHODS


def provided(adapter_type: Any, model: Any) -> frozenset[str]:
    """The needs ``adapter_type`` can supply for ``model``."""
    needs = {"text"}
    if adapter_type.score_layer(model) is not None:
        needs |= VISION_NEEDS.keys()
    return frozenset(needs)


def methods_needing(need: str) -> list[str]:
    """Registered method names that require ``need``."""
    return [name for name in METHODS.names() if need in METHODS[name].requires]


def check_method(adapter_type: Any, model: Any, method: Method) -> None:
    """Raise ``ValueError`` when ``method`` needs what ``adapter_type`` cannot supply."""
    # Only the vision-tower needs are an adapter's to supply here; text comes with every call
    # and layer-stage scores are measured inside the language model (checked by its pruner).
    missing = sorted((method.requires & VISION_NEEDS.keys()) - provided(adapter_type, model))
    if not missing:
        return
    config = model.config
    lines = "; ".join(
        f"{need} ({VISION_NEEDS.get(need, need)}) is needed by {', '.join(methods_needing(need))}"
        for need in missing
    )
    raise ValueError(
        f"{method.name} cannot run on {config.model_type}: it needs {', '.join(missing)}, which "
        f"this model cannot supply ({score_settings(config)}). {lines}. Choose a method without "
        "these needs (e.g. divprune, cdpruner)."
    )


def check_item_scores(method: Method, model_type: str, items: list) -> None:
    """At a prefill: raise ``ValueError`` when an image or frame lacks the vision scores the
    method requires (LLaVA-NeXT-Video frames, pooled after the tower, have no CLS attention)."""
    needs = sorted(method.requires & VISION_NEEDS.keys())
    lacking = [item for item in items if item.scores is None]
    if needs and lacking:
        raise ValueError(
            f"{method.name} needs {', '.join(needs)} per token, which {model_type} "
            f"{lacking[0].kind} inputs do not provide (the CLS attention exists for the tower's "
            "own patches; video frames pooled after the tower have none). Use images, or a "
            "method without these needs."
        )
