"""``visprune methods``: the table of selection methods, what each reads, and its parameters."""

from __future__ import annotations

import dataclasses

from .registry import METHODS

#: What each kind of context a method reads is, in the ``methods`` table.
NEEDS = {
    "text": "prompt text",
    "query": "a pooled query",
    "cls_attention": "vision CLS attention",
    "vision_keys": "vision keys",
    "cls_state": "vision CLS state",
    "scores": "LLM attention rows",
}

#: A needed kind that another one can stand in for: ReDiPrune pools the prompt text into its
#: query, or takes a ready pooled query instead.
ALTERNATIVES = {"text": "query"}

#: In-LLM methods read ``scores`` of the kind their ``signal`` names.
SCORE_SIGNALS = {"attention": "LLM attention rows", "keys": "LLM key norms"}


def needs(cls: type) -> str:
    """What ``cls`` reads besides the visual tokens: its ``requires`` (needed) and the rest of
    its ``uses`` (read when given), e.g. ``LLM key norms; optional: prompt text``; a need that
    another kind can stand in for reads ``prompt text or a pooled query``."""
    names = dict(NEEDS, scores=SCORE_SIGNALS.get(getattr(cls, "signal", None), NEEDS["scores"]))
    alternatives = {
        name: ALTERNATIVES[name]
        for name in cls.requires
        if ALTERNATIVES.get(name) in cls.uses - cls.requires
    }
    needed = [
        names.get(name, name) + (f" or {names[alternatives[name]]}" if name in alternatives else "")
        for name in sorted(cls.requires)
    ]
    optional = [
        names.get(name, name)
        for name in sorted(cls.uses - cls.requires - set(alternatives.values()))
    ]
    parts = [", ".join(needed)] if needed else []
    if optional:
        parts.append("optional: " + ", ".join(optional))
    return "; ".join(parts) or "tokens only"


def methods_table() -> str:
    """One line per registered method: name, stage, needs (columns aligned), parameters with
    their defaults (``-`` when the method has none besides ``budget``), under a header line."""
    rows = [("name", "stage", "needs", "parameters")]
    for name in METHODS.names():
        cls = METHODS[name]
        params = ", ".join(
            f"{field.name}={field.default!r}"
            for field in dataclasses.fields(cls)
            if field.name != "budget"
        )
        rows.append((name, cls.stage, needs(cls), params or "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row[:3], widths, strict=True))
        + "  "
        + row[3]
        for row in rows
    )
