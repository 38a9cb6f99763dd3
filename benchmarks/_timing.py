"""Timing and counting pieces that the selection benchmarks share (``selection.py``, ``gpu.py``).

Each script imports this module by putting its own folder on ``sys.path`` first, as
``serving.py`` does for its helpers.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

from visprune.dispatch import DispatchCounts


def clock(fn: Callable[[], object]) -> float:
    """Seconds of one call of ``fn`` (host wall clock, no device synchronisation)."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def median_ms(seconds: list[float]) -> float:
    """The median of ``seconds``, in milliseconds."""
    return 1e3 * statistics.median(seconds)


def counted(run: Callable[[], object]) -> DispatchCounts:
    """The dispatched ops and host syncs of one call of ``run``."""
    with DispatchCounts() as counts:
        run()
    return counts


def graph_break_site(error: Exception) -> str | None:
    """Where a core breaks its graph (``file:line in function``), read from the message of a
    :class:`visprune.compiled.SelectionNotCompilable`; ``None`` when the message names no line."""
    message = str(error)
    if " At " not in message:
        return None
    return message.split(" At ", 1)[1].split(": `", 1)[0]


def first_sentence(error: Exception) -> str:
    """The error's message without its ``Class:`` lead, up to its first full stop."""
    return str(error).split(": ", 1)[-1].split(". ")[0]
