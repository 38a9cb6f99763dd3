"""``--model_args``: what goes to the lmms-eval class, to the visprune adapter and to the method,
checked before any checkpoint is loaded."""

from __future__ import annotations

import dataclasses
import inspect
import os
from typing import Any

import visprune

#: ``--model_args`` keys that configure the visprune adapter rather than the method.
ADAPTER_OPTIONS = ("positions", "newlines")


def init_parameters(init) -> dict[str, Any]:
    """Keyword parameters an lmms-eval ``__init__`` takes (its ``**kwargs`` must stay empty),
    with their defaults."""
    return {
        name: parameter.default
        for name, parameter in inspect.signature(init).parameters.items()
        if parameter.kind not in (parameter.VAR_KEYWORD, parameter.VAR_POSITIONAL)
    }


def single_process() -> bool:
    """Whether lmms-eval runs in one process (not under ``accelerate launch`` / torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1")) == 1


def method_from_arguments(
    wrapper: type, method: Any, budget: Any, params: dict, accepted: dict
) -> visprune.Method:
    """The visprune method of ``--model_args``, validated before any checkpoint is loaded.

    ``params`` are the arguments the lmms-eval class does not take (``accepted``); each must be
    a parameter of the method.
    """
    if method is None:
        raise ValueError(
            f"{wrapper.__name__} needs method=NAME in --model_args (one of "
            f"{', '.join(visprune.list_methods())}; method=keepall runs unpruned)."
        )
    chosen = visprune.get_method(str(method))  # an unknown name fails here, with suggestions
    fields = {field.name for field in dataclasses.fields(chosen)}
    unknown = sorted(set(params) - fields)
    if unknown:
        base = next(c for c in wrapper.__mro__ if c.__module__.startswith("lmms_eval."))
        raise ValueError(
            f"{chosen.name} has no parameter(s) {', '.join(unknown)}, and lmms-eval's "
            f"{base.__module__}.{base.__name__} does not take them either. {chosen.name} "
            f"accepts: {', '.join(sorted(fields))}; visprune also takes positions, newlines; "
            f"lmms-eval takes: {', '.join(sorted(accepted))}."
        )
    if budget is not None:
        params = {**params, "budget": budget}
    chosen = visprune.get_method(chosen, **params)
    chosen.num_keep(1)  # a bad budget fails here, not after minutes of loading
    return chosen
