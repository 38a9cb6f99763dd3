"""Input checks shared by the methods: hyperparameters, finite values, per-image context.

Each raises ``ValueError`` naming the method, what was wrong, and what to pass instead.
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor

from ..functional.scaling import items_power_of_two_scaled, stackable


def check_param(
    method: str, name: str, value: object, *, low: float | None = None, strict: bool = False
) -> None:
    """Raise ``ValueError`` unless ``value`` is a finite real number ``>= low`` (``> low``)."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    ok = ok and math.isfinite(float(value))
    if ok and low is not None:
        ok = float(value) > low if strict else float(value) >= low
    if not ok:
        bound = "" if low is None else f" {'>' if strict else '>='} {low}"
        raise ValueError(f"{method}: {name} must be a finite number{bound}, got {value!r}.")


def check_finite(tensor: Tensor, what: str, method: str) -> None:
    """Raise ``ValueError`` naming ``method`` and the number of non-finite values in ``tensor``."""
    # Any NaN or inf makes the sum non-finite, and one reduction is far cheaper than an
    # element-wise mask; only a non-finite sum (or an overflowing one) pays for the exact count.
    if tensor.numel() == 0 or bool(torch.isfinite(tensor.sum(dtype=torch.float32))):
        return
    bad = int((~torch.isfinite(tensor)).sum())
    if bad:
        raise ValueError(
            f"{method}: {what} contain {bad} non-finite value(s) (NaN or inf); the model produced "
            "invalid features (check its dtype: fp16 overflows) or the input is corrupt."
        )


def check_all_finite(tensors: list[Tensor], what: str, method: str) -> None:
    """:func:`check_finite` for each of ``tensors``, with one host read for them all.

    Each host read stalls a GPU stream until it drains, so a batch pays one, not one per item.
    """
    tensors = [tensor for tensor in tensors if tensor.numel()]
    if not tensors:
        return
    if stackable(tensors):
        # One concatenation and one sum: the ops do not grow with the tensors either.
        if bool(torch.isfinite(torch.cat(tensors).sum(dtype=torch.float32))):
            return
    elif len({tensor.device for tensor in tensors}) == 1:
        sums = torch.stack([tensor.sum(dtype=torch.float32) for tensor in tensors])
        if bool(torch.isfinite(sums.sum())):
            return
    for tensor in tensors:  # rare: name the count of the first bad tensor
        check_finite(tensor, what, method)


def token_batch(tokens: object, method: str) -> Tensor:
    """Check the tokens given to a selection and return them as a ``(b, n, d)`` batch.

    ``tokens`` must be a non-empty floating-point tensor ``(n, d)`` (one image, returned as a
    view ``(1, n, d)``) or ``(b, n, d)``, with values (not on the meta device).
    """
    if not isinstance(tokens, Tensor):
        raise ValueError(f"{method}: tokens must be a torch.Tensor, got {type(tokens)}.")
    if tokens.dim() not in (2, 3):
        raise ValueError(
            f"{method}: tokens must have shape (n, d) or (b, n, d), got {tuple(tokens.shape)}."
        )
    if not tokens.is_floating_point():
        raise ValueError(f"{method}: tokens must be floating point, got {tokens.dtype}.")
    if tokens.device.type == "meta":
        raise ValueError(
            f"{method}: tokens are on the meta device and hold no values; load the "
            "model's weights (not an empty or device_map='meta' model) before selecting."
        )
    batch = tokens.unsqueeze(0) if tokens.dim() == 2 else tokens
    if 0 in batch.shape:
        raise ValueError(f"{method}: tokens are empty (shape {tuple(tokens.shape)}).")
    return batch


def finite_power_of_two_scaled(x: Tensor, what: str, method: str) -> Tensor:
    """:func:`~visprune.functional.scaling.items_power_of_two_scaled` of ``(b, n, d)`` tokens,
    and :func:`check_finite`, with one host read for both.
    """
    scaled, finite = items_power_of_two_scaled(x)
    if not finite:
        check_finite(scaled, what, method)  # raises, naming the count
    return scaled


def per_item(value: object, batch: int, shapes: tuple[int, ...], what: str, method: str) -> Tensor:
    """Check a batched per-image context tensor and return it in float32.

    ``shapes`` lists the accepted ranks (batch dimension included); the leading dimension must
    be ``batch``. Non-finite values raise like non-finite tokens do.
    """
    if not isinstance(value, Tensor) or not value.is_floating_point() or value.dim() not in shapes:
        ranks = " or ".join(str(rank - 1) for rank in shapes)
        raise ValueError(
            f"{method}: {what} must be a float tensor with {ranks} dimension(s) per image, got "
            f"{getattr(value, 'shape', type(value))}."
        )
    if value.shape[0] != batch:
        raise ValueError(
            f"{method}: {what} has {value.shape[0]} rows but there are {batch} images."
        )
    value = value.float()
    check_finite(value, what, method)
    return value
