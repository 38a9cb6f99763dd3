"""Exact power-of-two scaling that makes every selection independent of the tokens' scale.

Every method's objective is scale-free (cosines, ratios of energies, argmaxes of Gram entries),
but float32 squares overflow beyond ``|x| ~ 1e19`` and underflow below ``1e-19``. An item whose
largest magnitude lies beyond ``2**±SAFE_EXPONENT`` is therefore scaled by a power of two to a
largest magnitude in [0.5, 1): only exponents change, so the values stay exact, and ordinary
features are left as they are.

Each host read stalls a GPU stream until it drains, so a batch pays one read for all its items.
"""

from __future__ import annotations

import torch
from torch import Tensor

#: Items whose largest magnitude lies within 2**±SAFE_EXPONENT are selected unscaled: their
#: squares and Gram entries stay far from float32 overflow and underflow.
SAFE_EXPONENT = 40


def power_of_two_scaled(x: Tensor, dims: tuple[int, ...]) -> Tensor:
    """``x`` in float32; slices over ``dims`` whose largest magnitude is beyond
    ``2**±SAFE_EXPONENT`` are scaled by a power of two to a largest magnitude in [0.5, 1).

    Exact (only exponents change; the scaling runs in float64, so subnormal and huge values
    survive it), and a no-op for ordinary features. float64 input is scaled before the cast, so
    values beyond the float32 range still work; NaN and inf pass through for the finite check.
    """
    return all_power_of_two_scaled([x], dims)[0]


def items_power_of_two_scaled(x: Tensor) -> tuple[Tensor, bool]:
    """:func:`power_of_two_scaled` of ``(b, n, d)`` tokens per item, and whether all are finite.

    Both read one peak per item: a finite largest and smallest value mean every value is finite
    (NaN spreads into both), so the tokens are read twice in all (not four times) and the host
    once (not twice).

    Parameters
    ----------
    x : Tensor
        ``(b, n, d)`` tokens of any float dtype.

    Returns
    -------
    scaled : Tensor
        ``(b, n, d)`` float32, each item scaled where needed; the unscaled float32 (or float64)
        tokens when some value is not finite (the caller reports them).
    finite : bool
        Whether every value is finite.
    """
    work = x.double() if x.dtype == torch.float64 else x.float()
    peak = peak_magnitude(work, (-2, -1))
    exponent = scaling_exponent(peak)
    finite, scaled = torch.stack([torch.isfinite(peak).all(), exponent.any()]).tolist()
    if not finite:
        return work, False
    if scaled:
        return torch.ldexp(work.double(), -exponent.double()).float(), True
    return work.float(), True


def peak_magnitude(x: Tensor, dims: tuple[int, ...]) -> Tensor:
    """``|x|.amax(dims)`` (kept dims) without the temporary ``|x|``: two reductions, no copy."""
    return torch.maximum(x.amax(dim=dims, keepdim=True), x.amin(dim=dims, keepdim=True).neg())


def scaling_exponent(peak: Tensor) -> Tensor:
    """The power of two that brings ``peak`` into [0.5, 1), or 0 where it is within range."""
    finite = torch.where(torch.isfinite(peak), peak, torch.ones_like(peak))
    _, exponent = torch.frexp(finite)
    return torch.where(exponent.abs() > SAFE_EXPONENT, exponent, torch.zeros_like(exponent))


def all_power_of_two_scaled(tensors: list[Tensor], dims: tuple[int, ...]) -> list[Tensor]:
    """:func:`power_of_two_scaled` for each of ``tensors``, with one host read for them all.

    A batch of texts pays one host read, not one per item. A tensor repeated (a prompt shared
    by video frames) is scaled once and stays one tensor repeated.
    """
    distinct = list({id(x): x for x in tensors}.values())
    if len(distinct) < len(tensors):
        scaled = all_power_of_two_scaled(distinct, dims)
        by_id = {id(x): result for x, result in zip(distinct, scaled, strict=True)}
        return [by_id[id(x)] for x in tensors]
    if len(tensors) > 1 and dims == (-2, -1) and all(x.dim() == 2 for x in tensors):
        if stackable(tensors):
            return _rows_power_of_two_scaled(tensors)
    works = [x.double() if x.dtype == torch.float64 else x.float() for x in tensors]
    exponents = {}
    for index, work in enumerate(works):
        if work.numel():
            exponents[index] = scaling_exponent(peak_magnitude(work, dims))
    if not exponents or not _any_nonzero(list(exponents.values())):
        return [work.float() for work in works]
    return [
        torch.ldexp(work.double(), -exponents[index].double()).float()
        if index in exponents
        else work.float()
        for index, work in enumerate(works)
    ]


def stackable(tensors: list[Tensor]) -> bool:
    """Whether ``tensors`` concatenate along their first dimension (same device, dtype, rest)."""
    first = tensors[0]
    return all(
        tensor.device == first.device
        and tensor.dtype == first.dtype
        and tensor.shape[1:] == first.shape[1:]
        for tensor in tensors
    )


def _rows_power_of_two_scaled(tensors: list[Tensor]) -> list[Tensor]:
    """:func:`all_power_of_two_scaled` of ``(m_i, d)`` matrices of one dtype, as one packed batch.

    The matrices are concatenated (and converted) once and each row knows its matrix, so the ops
    (and the GPU launches) do not grow with the number of matrices; the values are those of the
    per-matrix rule. Float32 matrices that need no scaling come back as given.
    """
    lengths = [len(tensor) for tensor in tensors]
    packed = torch.cat(tensors)
    packed = packed.double() if packed.dtype == torch.float64 else packed.float()

    def unscaled() -> list[Tensor]:
        if tensors[0].dtype == torch.float32:
            return list(tensors)
        return list(packed.float().split(lengths))

    if not packed.numel():
        return unscaled()
    owner = torch.tensor(
        [item for item, length in enumerate(lengths) for _ in range(length)],
        device=packed.device,
    )
    # Absolute values are >= 0, so the zeros the peaks start from never win (NaN propagates).
    peaks = packed.new_zeros(len(tensors)).scatter_reduce(
        0, owner, peak_magnitude(packed, (-1,)).squeeze(-1), "amax", include_self=True
    )
    exponents = scaling_exponent(peaks)
    if not bool(exponents.any()):
        return unscaled()
    scaled = torch.ldexp(packed.double(), -exponents[owner].double().unsqueeze(-1)).float()
    return list(scaled.split(lengths))


def _any_nonzero(tensors: list[Tensor]) -> bool:
    """Whether any of ``tensors`` is non-zero: one host read where they share a device."""
    if len({tensor.device for tensor in tensors}) == 1:
        return bool(torch.stack([tensor.any() for tensor in tensors]).any())
    return any(bool(tensor.any()) for tensor in tensors)
