"""Generation requests in batches: their settings, stop strings and generated lengths."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lmms_eval.api.instance import Instance


def gen_kwargs(request: Instance) -> dict:
    """A generation request's task kwargs, chat (``args[2]``) or simple (``args[1]``)."""
    args = request.args
    return dict(args[2] if callable(args[1]) else args[1])


def generation_settings(gen_kwargs: dict) -> tuple[dict, list[str]]:
    """``generate`` arguments and stop strings from a task's generation kwargs."""
    until = gen_kwargs.get("until") or []
    if isinstance(until, str):
        until = [until]
    temperature = float(gen_kwargs.get("temperature") or 0.0)
    settings: dict[str, Any] = {
        "max_new_tokens": int(gen_kwargs.get("max_new_tokens", 1024)),
        "num_beams": int(gen_kwargs.get("num_beams") or 1),
        "do_sample": temperature > 0,
    }
    if temperature > 0:
        settings["temperature"] = temperature
        if gen_kwargs.get("top_p") is not None:
            settings["top_p"] = float(gen_kwargs["top_p"])
    return settings, [stop for stop in until if stop]


def request_batches(requests: Sequence, size: int, key=None) -> list[list[int]]:
    """Request indices in batches of ``size``, grouped by ``key`` (in order of appearance)."""
    groups: dict[Any, list[int]] = {}
    for index, request in enumerate(requests):
        groups.setdefault(key(request) if key else None, []).append(index)
    size = max(1, int(size))
    return [g[i : i + size] for g in groups.values() for i in range(0, len(g), size)]


def generated_length(tokens: list[int], stops: set[int]) -> int:
    """Generated tokens up to and including the first end-of-sequence (padding excluded)."""
    for i, token in enumerate(tokens):
        if token in stops:
            return i + 1
    return len(tokens)


def cut_at_stops(text: str, until: list[str]) -> str:
    """``text`` up to the first stop string."""
    for stop in until:
        text = text.split(stop)[0]
    return text
