"""Placeholder token runs sized to the kept count, for families whose vLLM processor writes the
placeholder tokens itself (InternVL's ``<img> ... </img>``, Gemma 3's ``<start_of_image> ...``).

Imports no vLLM code.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence


def shrink_runs(
    ids: Sequence[int], placeholders: Collection[int], keep: Callable[[int], int]
) -> list[int]:
    """``ids`` with each run of one placeholder id shortened from ``n`` to ``keep(n)`` tokens.

    A run is one selection problem: an InternVL image (all its tiles), a Gemma 3 image or
    pan-and-scan crop; the tokens around it (start/end marks, text) stay as they are.

    Raises
    ------
    ValueError
        When ``keep(n)`` is not between 1 and ``n``.
    """
    out: list[int] = []
    start = 0
    while start < len(ids):
        token = ids[start]
        end = start + 1
        if token in placeholders:
            while end < len(ids) and ids[end] == token:
                end += 1
            kept = keep(end - start)
            if not 0 < kept <= end - start:
                raise ValueError(
                    f"visprune: {kept} kept placeholders for a run of {end - start}; a budget "
                    "keeps between 1 and all of an image's tokens."
                )
            out.extend([token] * kept)
        else:
            out.append(token)
        start = end
    return out
