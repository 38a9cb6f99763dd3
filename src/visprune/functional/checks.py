"""The input check every ``(b, n, d)`` selection core runs first: shapes, dtype and ``k``.

Python-level only (shape, dtype and an int): no tensor op and no host sync, so a check costs
nothing on a GPU and traces under ``torch.compile(fullgraph=True)``. Values (finiteness, scale)
are the ``Method`` classes' job, which read the host once per call.
"""

from __future__ import annotations

import numbers

from torch import Tensor


def check_tokens_and_k(core: str, tokens: object, k: object) -> None:
    """Refuse anything but ``(b, n, d)`` floating tokens and an int ``1 <= k < n``.

    ``k >= n`` keeps every token, which the ``Method`` classes answer without a core
    (``torch.arange(n)``); a core is only called to choose.

    Parameters
    ----------
    core : str
        The core's name, for the message.
    tokens : Tensor
        ``(b, n, d)`` floating tokens.
    k : int
        Picks per item.

    Raises
    ------
    ValueError
        Naming the core, what was wrong and what to pass.
    """
    if not isinstance(tokens, Tensor):
        raise ValueError(
            f"{core}: tokens must be a floating tensor (b, n, d), got {type(tokens).__name__}."
        )
    if tokens.dim() != 3:
        raise ValueError(
            f"{core}: tokens must be (b, n, d), got {tokens.dim()}-D {tuple(tokens.shape)}; "
            "for one image add a batch dimension (tokens[None])."
        )
    if not tokens.is_floating_point():
        raise ValueError(
            f"{core}: tokens must be floating, got {tokens.dtype}; pass tokens.float()."
        )
    n = tokens.shape[1]
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise ValueError(f"{core}: k must be an int, got {k!r} of type {type(k).__name__}.")
    if k < 1:
        raise ValueError(f"{core}: k is the tokens to keep per item and must be >= 1, got {k}.")
    if k >= n:
        raise ValueError(
            f"{core}: k must be below the {n} tokens per item, got {k}; to keep every token "
            f"take torch.arange({n}) instead of calling the core (a visprune method's budget "
            "may be any count)."
        )


def check_query(core: str, query: object, tokens: Tensor) -> None:
    """Refuse anything but a floating ``(b, Cv)`` query for ``(b, n, Cv)`` tokens.

    Raises
    ------
    ValueError
        Naming the core, the shapes found and the shape to pass.
    """
    b, _, width = tokens.shape
    if (
        not isinstance(query, Tensor)
        or not query.is_floating_point()
        or tuple(query.shape) != (b, width)
    ):
        got = (
            f"{query.dtype} {tuple(query.shape)}"
            if isinstance(query, Tensor)
            else type(query).__name__
        )
        raise ValueError(
            f"{core}: query must be a floating tensor ({b}, {width}) (one row per item, at the "
            f"tokens' width), got {got}; pool the prompt with pool_text_queries and bring it to "
            "the width with match_query_width."
        )
