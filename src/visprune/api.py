"""The public entry points: pick a method by name and run it on tokens."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from torch import Tensor

from .methods import Context, Method
from .registry import METHODS


def list_methods() -> list[str]:
    """Names of every registered selection method, in registration order."""
    return METHODS.names()


def get_method(name: str | Method, **params: object) -> Method:
    """Build a method from its registry name and hyperparameters.

    Parameters
    ----------
    name : str or Method
        A registered name (see :func:`list_methods`) or a ``Method`` instance, which is copied
        with ``params`` applied.
    **params
        Hyperparameters of that method (``budget``, ``gamma``, ``alpha``, ``tau``, ``seed`` ...).

    Returns
    -------
    Method

    Raises
    ------
    KeyError
        For an unknown name; the message lists the available names and the closest match.
    ValueError
        For a parameter the method does not have, or a bad value.
    """
    if isinstance(name, Method):
        cls, build = type(name), lambda **kw: dataclasses.replace(name, **kw)
    else:
        if not isinstance(name, str):
            raise ValueError(f"method must be a name or a Method instance, got {name!r}.")
        cls = build = METHODS[name.lower()]
    accepted = [field.name for field in dataclasses.fields(cls)]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(
            f"{cls.name} has no parameter(s) {', '.join(unknown)}; it accepts: "
            f"{', '.join(accepted)}."
        )
    return build(**params)


def select(
    method: str | Method,
    tokens: Tensor,
    budget: int | float | None = None,
    *,
    text: Tensor | Sequence[Tensor] | None = None,
    query: Tensor | None = None,
    **params: object,
) -> Tensor:
    """Select the visual tokens to keep, without any model.

    Parameters
    ----------
    method : str or Method
        A registered name (``"otprune"``, ``"divprune"`` ...) or a ``Method`` instance.
    tokens : Tensor
        ``(n, d)`` visual tokens of one image, or ``(b, n, d)`` for ``b`` images/frames.
    budget : int or float, optional
        Tokens to keep per image: a count, or a fraction in (0, 1]. Default: the method's own
        ``budget``.
    text : Tensor or sequence of Tensor, optional
        Prompt-token embeddings ``(m, d_t)`` for text-conditioned methods; for a batch, one tensor
        shared by every item or a list of ``b`` tensors. Ignored by methods that use no text.
    query : Tensor, optional
        ReDiPrune's ready pooled query ``(d_q,)`` or ``(b, d_q)``, instead of ``text``.
    **params
        Hyperparameters of the method (``gamma``, ``alpha``, ``tau``, ``seed`` ...).

    Returns
    -------
    Tensor
        int64 indices ``(k,)`` or ``(b, k)``, unique and ascending, on the input's device.

    Examples
    --------
    >>> import torch, visprune
    >>> tokens = torch.randn(576, 4096)
    >>> visprune.select("divprune", tokens, budget=64).shape
    torch.Size([64])
    """
    if budget is not None:
        params["budget"] = budget
    chosen = get_method(method, **params)
    if query is not None and "query" not in chosen.uses:
        raise ValueError(
            f"{chosen.name} takes no query (it is ReDiPrune's pooled prompt); pass text=... "
            "for text-conditioned methods."
        )
    if text is not None and not isinstance(text, Tensor):
        text = list(text)
    return chosen.select(tokens, None, Context(text=text, query=query))
