"""Budgets: a token count or a fraction of an image's tokens, resolved to a count ``k``."""

from __future__ import annotations

import math
import numbers

Budget = int | float


def resolve_budget(budget: object, n: int, method: str = "method") -> int:
    """Turn a budget into a token count ``k`` for ``n`` candidates.

    An ``int`` is a count; a ``float`` in (0, 1] is a fraction of ``n`` with
    ``k = max(1, round(fraction * n))`` (Python rounding, half to even). ``k >= n`` keeps all.

    Parameters
    ----------
    budget : int or float
        The budget as given by the user.
    n : int
        Number of candidate tokens.
    method : str
        Name used in error messages.

    Returns
    -------
    int
        ``k`` in ``[1, n]``.

    Raises
    ------
    ValueError
        For ``None``, booleans, non-numbers, NaN, ``budget <= 0`` or a fraction above 1.
    """
    if budget is None:
        raise ValueError(
            f"{method}: no budget given; pass budget=<int count> or budget=<fraction in (0, 1]>."
        )
    if isinstance(budget, bool) or not isinstance(budget, numbers.Real):
        raise ValueError(
            f"{method}: budget must be an int (a token count) or a float in (0, 1] "
            f"(a fraction of the tokens), got {budget!r} of type {type(budget).__name__}."
        )
    if isinstance(budget, numbers.Integral):
        count = int(budget)
        if count <= 0:
            raise ValueError(f"{method}: budget must be positive, got {count}.")
        return min(count, n)
    fraction = float(budget)
    if not math.isfinite(fraction):
        shown = "NaN" if math.isnan(fraction) else repr(fraction)
        raise ValueError(f"{method}: budget is {shown}; pass a count or a fraction in (0, 1].")
    if fraction <= 0:
        raise ValueError(f"{method}: budget must be positive, got {fraction!r}.")
    if fraction > 1:
        raise ValueError(
            f"{method}: a float budget is a fraction of the tokens and must be in (0, 1], got "
            f"{fraction!r}; {count_hint(fraction)}"
        )
    return min(n, max(1, round(fraction * n)))


def count_hint(fraction: float) -> str:
    """What to pass instead of a float budget above 1: the same whole number as an int, or, for
    a value with a fractional part (``1.5``), a whole count of tokens."""
    if fraction.is_integer():
        return f"for {int(fraction)} tokens pass an int (budget={int(fraction)})."
    return (
        f"a count of tokens is a whole number: pass an int such as budget={math.floor(fraction)} "
        f"or budget={math.ceil(fraction)}."
    )
