"""The ``visprune`` entry of a vLLM model's ``hf_overrides``, parsed and checked at engine start.

``hf_overrides={"visprune": {"method": "divprune", "budget": 64, <hyperparameters>}}`` sets
``hf_config.visprune``; every vLLM process (front end and engine) reads it from there. This
module imports no vLLM code, so the checks run (and are tested) anywhere.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Any

from ...methods import Method
from ...methods.context import VISION_NEEDS

#: The key of ``hf_overrides`` (and attribute of ``hf_config``) that turns pruning on.
OVERRIDE_KEY = "visprune"


@dataclass(frozen=True)
class ServingSettings:
    """What the plugin serves with: one method whose budget is fixed per image.

    vLLM sizes every request's placeholder tokens before the image is encoded, so the budget is
    resolved from the image's candidate count alone (an int count or a fraction of it), exactly
    as :meth:`visprune.methods.Method.num_keep` does for ``visprune.apply``.
    """

    method: Method
    #: The position mode the override asked for (``None``: the architecture's own, see
    #: ``SERVED_POSITIONS``); checked against the architecture at engine start.
    positions: str | None = None

    @property
    def uses_text(self) -> bool:
        """Whether the method reads the prompt (then the text after the image travels with it)."""
        return "text" in self.method.uses

    @property
    def uses_vision_scores(self) -> bool:
        """Whether the method reads the vision tower's CLS attention, keys or CLS state."""
        return bool(self.method.uses & (VISION_NEEDS.keys() | {"cls_state"}))

    @property
    def scores_patches(self) -> bool:
        """Whether the method scores the vision tower's patches ("vision"-stage methods and
        those that read the CLS attention): packed tokens without a patch (LLaVA-NeXT's
        newlines) are then no candidates and always stay."""
        return self.method.stage == "vision" or self.uses_vision_scores

    def num_keep(self, candidates: int) -> int:
        """Placeholder tokens (= kept tokens) of an image with ``candidates`` tokens."""
        return min(self.method.num_keep(candidates), candidates)


def parse_settings(raw: Any) -> ServingSettings:
    """Check a ``visprune`` override and build its method.

    Parameters
    ----------
    raw : dict or str
        ``{"method": name, "budget": int | float, **hyperparameters}``, or the same as JSON text.
        ``"positions"``, if present, must be the served architecture's mode (checked at engine
        start): ``"compact"`` (consecutive positions) for LLaVA models, ``"original"`` (M-RoPE
        positions of the full prompt) for Qwen-VL models.

    Raises
    ------
    ValueError, KeyError
        For anything that is not a servable method with a budget; the message says what to pass.
    """
    from ...api import get_method

    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as error:
            raise ValueError(f"visprune: the override is not valid JSON ({error}).") from None
    if not isinstance(raw, dict):
        raise ValueError(
            f"visprune: hf_overrides['visprune'] must be a dict such as "
            f'{{"method": "divprune", "budget": 64}}, got {raw!r}.'
        )
    params = dict(raw)
    name = params.pop("method", None)
    if name is None:
        raise ValueError(
            'visprune: hf_overrides[\'visprune\'] names no method; add "method": "<name>" '
            "(see `visprune methods`)."
        )
    if isinstance(name, str) and name.lower() == "keepall":
        raise ValueError(
            "visprune: keepall is not served (the plugin sizes the image placeholders from a "
            "budget); serve without the visprune override for the unpruned model."
        )
    if params.get("budget") is None:
        raise ValueError(
            f'visprune: no budget for {name!r}; add "budget": <tokens per image> or <fraction>.'
        )
    positions = params.pop("positions", None)
    if positions not in (None, "compact", "original"):
        raise ValueError(
            f'visprune: positions must be "compact" or "original" (or left out for the model\'s '
            f"own), got {positions!r}."
        )
    try:
        method = get_method(name, **params)
        method.validate()
    except KeyError as error:  # unknown name: its message lists the registered ones
        raise ValueError(f"visprune: {error.args[0]}") from None
    except ValueError as error:
        raise ValueError(f"visprune: {error}") from None
    if method.stage == "layer":
        raise ValueError(
            f"visprune: {method.name} prunes inside the language model, which the vLLM plugin "
            "does not do; serve a method that selects before the language model."
        )
    return ServingSettings(method, positions)


def settings_of(hf_config: Any) -> ServingSettings | None:
    """The settings of a model config, or ``None`` when it has no ``visprune`` override."""
    raw = getattr(hf_config, OVERRIDE_KEY, None)
    if raw is None:
        return None
    if isinstance(raw, dict):
        # A config is read many times per request; parse each distinct override once.
        raw = json.dumps(raw, sort_keys=True, default=repr)
    return _parsed(raw) if isinstance(raw, str) else parse_settings(raw)


@functools.lru_cache(maxsize=16)
def _parsed(text: str) -> ServingSettings:
    return parse_settings(text)
