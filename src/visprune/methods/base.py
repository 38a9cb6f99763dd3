"""The ``Method`` contract shared by every selection method.

A method is a small dataclass of hyperparameters plus ``budget``. ``Method.select`` validates the
input, resolves the budget, upcasts to float32, and hands a ``(b, n, d)`` batch to the method's
vectorised ``_select``. Everything a method needs beyond the tokens (prompt text, a ready query)
arrives in a :class:`Context`; methods never see a model.

The exact contract (budget rules, ties, errors) is ``spec/METHODS.md``.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass, fields
from typing import ClassVar, Literal

import torch
from torch import Tensor

from ..compiled import compile_mode, compiled_core

Stage = Literal["vision", "llm", "layer"]
Budget = int | float


@dataclass(frozen=True)
class Context:
    """What a method may know besides the visual tokens.

    Parameters
    ----------
    text : Tensor or list of Tensor, optional
        Prompt-token embeddings ``(m, d_t)``: the LLM input embeddings of the prompt tokens after
        the sample's last visual token, without padding (spec "Text"). For a batch ``(b, n, d)``,
        either one ``(m, d_t)`` tensor shared by every item (video frames of one prompt) or a list
        of ``b`` tensors. ``m`` may be 0 (an empty tail).
    query : Tensor, optional
        A ready text query ``(d_q,)`` (shared) or ``(b, d_q)``; used by methods that pool the text
        into one vector (ReDiPrune) instead of ``text``.
    cls_attention : Tensor, optional
        The vision tower's CLS attention to each token at the selected vision layer: ``(H, n)``
        per head (or ``(n,)``) for ``(n, d)`` tokens, ``(b, H, n)`` (or ``(b, n)``) for a batch
        (VisPruner, VisionZip; need ``"cls_attention"``).
    vision_keys : Tensor, optional
        That layer's key projections of the tokens averaged over heads, ``(n, hd)`` or
        ``(b, n, hd)`` (VisionZip; needs ``"vision_keys"``).
    cls_state : Tensor, optional
        That layer's output hidden state of the CLS token, ``(d,)`` or ``(b, d)`` (VisionZip keeps
        it as a token when given).
    image_embeds, text_embeds : Tensor, optional
        Ready CLIP embeddings for CDPruner's relevance: the image patches ``(n, C)`` or
        ``(b, n, C)`` and the instruction ``(M, C)`` (shared) or a list of ``b`` of them.
    scores : Tensor or list of Tensor, optional
        Per-token scores that a layer-stage method (FastV, PyramidDrop, DART) reads from inside
        the language model: ``(n,)`` for ``(n, d)`` tokens, ``(b, n)`` or a list of ``b``
        ``(n,)`` tensors for a batch (the attention each token receives from the last prompt
        token, or each token's key norm).
    text_scores : Tensor or list of Tensor, optional
        The same scores for the ``text`` tokens: ``(m,)`` per item (DART's text pivots).
    """

    text: Tensor | list[Tensor] | None = None
    query: Tensor | None = None
    cls_attention: Tensor | None = None
    vision_keys: Tensor | None = None
    cls_state: Tensor | None = None
    image_embeds: Tensor | None = None
    text_embeds: Tensor | list[Tensor] | None = None
    scores: Tensor | list[Tensor] | None = None
    text_scores: Tensor | list[Tensor] | None = None

    def texts_for(self, batch: int, method: str = "method") -> list[Tensor] | None:
        """Return one text tensor per batch item, or ``None`` when no text was given."""
        if self.text is None:
            return None
        if isinstance(self.text, Tensor):
            return [self.text] * batch
        texts = list(self.text)
        if len(texts) != batch:
            raise ValueError(
                f"{method}: text is a list of {len(texts)} tensors but the batch has {batch} "
                "items; pass one (m, d) tensor per item, or a single tensor shared by all items."
            )
        return texts


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
            f"{fraction!r}; pass an int (budget={int(fraction)}) for a token count."
        )
    return min(n, max(1, round(fraction * n)))


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
    if _stackable(tensors):
        # One concatenation and one sum: the ops do not grow with the tensors either.
        if bool(torch.isfinite(torch.cat(tensors).sum(dtype=torch.float32))):
            return
    elif len({tensor.device for tensor in tensors}) == 1:
        sums = torch.stack([tensor.sum(dtype=torch.float32) for tensor in tensors])
        if bool(torch.isfinite(sums.sum())):
            return
    for tensor in tensors:  # rare: name the count of the first bad tensor
        check_finite(tensor, what, method)


def _stackable(tensors: list[Tensor]) -> bool:
    """Whether ``tensors`` concatenate along their first dimension (same device, dtype, rest)."""
    first = tensors[0]
    return all(
        tensor.device == first.device
        and tensor.dtype == first.dtype
        and tensor.shape[1:] == first.shape[1:]
        for tensor in tensors
    )


#: Vision-tower context a method may require, and what it is (for the error messages).
VISION_NEEDS: dict[str, str] = {
    "cls_attention": (
        "the vision tower's CLS attention to each token at the selected vision layer, (H, n) "
        "or (b, H, n); only towers with a CLS token (CLIP) have it"
    ),
    "vision_keys": (
        "that vision layer's key projections of the tokens averaged over heads, (n, hd) or "
        "(b, n, hd)"
    ),
}


@dataclass
class Method:
    """Base class of every selection method.

    Subclasses are dataclasses that add their hyperparameters and implement :meth:`_select`.

    Attributes
    ----------
    budget : int or float or None
        Tokens to keep per image: a count, or a fraction in (0, 1] of the image's tokens.
    name : str
        Registry name (class attribute).
    stage : {"vision", "llm", "layer"}
        Where the method runs: before the projector, on the LLM input embeddings, or inside the LLM.
    requires : frozenset of str
        Context the method cannot run without: ``"text"``, or the vision-tower scores
        ``"cls_attention"`` and ``"vision_keys"`` (:data:`VISION_NEEDS`), which an adapter
        supplies only where the tower has a CLS token (``apply`` refuses elsewhere).
    uses : frozenset of str
        Context the method uses when given (a superset of ``requires``).
    """

    budget: Budget | None = None

    name: ClassVar[str] = "method"
    stage: ClassVar[Stage] = "llm"
    requires: ClassVar[frozenset[str]] = frozenset()
    uses: ClassVar[frozenset[str]] = frozenset()
    #: Whether text must be LLM input embeddings of the tokens' own width (compared in one space).
    text_in_token_space: ClassVar[bool] = False
    #: Whether the method merges tokens (returns new ones besides the kept indices, see
    #: ``reduce``) instead of only selecting; ``select`` refuses such methods.
    merges: ClassVar[bool] = False

    def params(self) -> dict[str, object]:
        """The hyperparameters, ``budget`` included, as a JSON-serialisable dict."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def validate(self) -> None:
        """Check every hyperparameter again (a field may have been changed after creation).

        Raises
        ------
        ValueError
            For a bad value, naming the parameter.
        """
        post_init = getattr(self, "__post_init__", None)
        if post_init is not None:
            post_init()
        if self.budget is not None:
            resolve_budget(self.budget, 1, self.name)

    def num_keep(self, n: int, budget: Budget | None = None) -> int:
        """Resolve ``budget`` (default: ``self.budget``) into a count for ``n`` candidates."""
        return resolve_budget(self.budget if budget is None else budget, n, self.name)

    @torch.no_grad()
    def select(
        self,
        tokens: Tensor,
        k: int | None = None,
        ctx: Context | None = None,
        *,
        compile: bool | str = False,
    ) -> Tensor:
        """Select which visual tokens to keep.

        Parameters
        ----------
        tokens : Tensor
            ``(n, d)`` tokens of one image, or ``(b, n, d)`` for ``b`` images/frames with the
            same ``n``. Any float dtype; the selection runs in float32.
        k : int, optional
            Tokens to keep per item; default: resolved from ``self.budget``.
        ctx : Context, optional
            Prompt text or query for text-conditioned methods.
        compile : bool or str
            Run the selection core compiled with ``torch.compile(fullgraph=True,
            dynamic=False)``, once per hyperparameters, shapes, device and dtype
            (:mod:`visprune.compiled`); a string picks the torch.compile mode (e.g.
            ``"reduce-overhead"`` for CUDA graphs). Same picks as eager.

        Returns
        -------
        Tensor
            int64 indices ``(k,)`` or ``(b, k)``, unique and ascending per item, on the input's
            device.

        Notes
        -----
        Selection is a no-grad operation, and it does not depend on the overall scale of the
        tokens: an item (or text tensor) whose largest magnitude is beyond ``2**±40`` is first
        scaled by a power of two, which is exact, so |x| ~ 1e30 or 1e-30 picks what |x| ~ 1
        picks (every method's objective is scale-free; unscaled, squares would overflow or
        underflow float32).

        Raises
        ------
        visprune.compiled.SelectionNotCompilable
            With ``compile``, when the method's core does not run as one graph.
        """
        self.validate()
        mode = compile_mode(compile)
        if self.merges:
            raise ValueError(
                f"{self.name} merges tokens, so it is not a pure selection: call "
                f"visprune.get_method({self.name!r}, budget=...).reduce(tokens, ctx=Context(...)) "
                f"for the kept indices and the merged tokens, or visprune.functional.{self.name}."
            )
        ctx = ctx or Context()
        if not isinstance(tokens, Tensor):
            raise ValueError(f"{self.name}: tokens must be a torch.Tensor, got {type(tokens)}.")
        if tokens.dim() not in (2, 3):
            raise ValueError(
                f"{self.name}: tokens must have shape (n, d) or (b, n, d), got "
                f"{tuple(tokens.shape)}."
            )
        if not tokens.is_floating_point():
            raise ValueError(f"{self.name}: tokens must be floating point, got {tokens.dtype}.")
        if tokens.device.type == "meta":
            raise ValueError(
                f"{self.name}: tokens are on the meta device and hold no values; load the "
                "model's weights (not an empty or device_map='meta' model) before selecting."
            )
        batch = tokens.unsqueeze(0) if tokens.dim() == 2 else tokens
        b, n, d = batch.shape
        if n == 0 or d == 0 or b == 0:
            raise ValueError(f"{self.name}: tokens are empty (shape {tuple(tokens.shape)}).")
        batch = finite_power_of_two_scaled(batch, "tokens", self.name)
        k = self.num_keep(n) if k is None else resolve_budget(k, n, self.name)
        if tokens.dim() == 2:
            ctx = _with_batch_dim(ctx)
        self._check_context(ctx, b, d)
        ctx = _scaled_context(ctx)
        if k >= n:
            keep = torch.arange(n, device=tokens.device).expand(b, n).clone()
        else:
            core = self._select if mode is None else compiled_core(self, mode)
            keep = core(batch, k, self._prepare(ctx, batch)).sort(dim=-1).values
        return keep[0] if tokens.dim() == 2 else keep

    def _check_context(self, ctx: Context, batch: int, width: int) -> None:
        for need in sorted(self.requires & VISION_NEEDS.keys()):
            if getattr(ctx, need) is None:
                raise ValueError(f"{self.name} needs {need}=...: {VISION_NEEDS[need]}.")
        if "text" in self.requires and ctx.text is None and ctx.query is None:
            raise ValueError(
                f"{self.name} is text-conditioned and needs the prompt: pass text=(m, d_t) "
                "embeddings of the prompt tokens after the image (an empty (0, d_t) tensor means "
                "'no text'), or a ready query=(d_q,)."
            )
        # Context a method does not use is ignored, so one call can serve every method.
        texts = ctx.texts_for(batch, self.name) if "text" in self.uses else None
        for text in texts or []:
            if not isinstance(text, Tensor) or text.dim() != 2 or not text.is_floating_point():
                raise ValueError(
                    f"{self.name}: each text must be a float tensor of shape (m, d_t), got "
                    f"{getattr(text, 'shape', type(text))}."
                )
            if self.text_in_token_space and text.shape[-1] != width:
                raise ValueError(
                    f"{self.name}: text width {text.shape[-1]} differs from the token width "
                    f"{width}; pass the LLM input embeddings of the prompt (the tokens' own space)."
                )
        if texts:
            # As given: the check sums in float32 itself, and a conversion per text would add an
            # op (a launch on a GPU) per item.
            unique = list({id(text): text for text in texts}.values())
            check_all_finite(unique, "text embeddings", self.name)
        if ctx.query is not None and "query" in self.uses:
            query = ctx.query
            if not isinstance(query, Tensor) or query.dim() not in (1, 2):
                raise ValueError(
                    f"{self.name}: query must be a tensor (d_q,) or (b, d_q), got "
                    f"{getattr(query, 'shape', type(query))}."
                )
            if query.dim() == 2 and query.shape[0] != batch:
                raise ValueError(
                    f"{self.name}: query has {query.shape[0]} rows but the batch has {batch} items."
                )
            check_finite(query.float(), "query", self.name)

    def _prepare(self, ctx: Context, tokens: Tensor) -> Context:
        """The context :meth:`_select` reads, with every check that reads the host done here.

        ``_select`` then runs on the device alone, with shapes fixed by ``(b, n, k)``: it can be
        compiled whole (``torch.compile(fullgraph=True)``) and captured in a CUDA graph.
        ``tokens`` is the validated ``(b, n, d)`` float32 batch. Default: ``ctx`` unchanged.
        """
        return ctx

    def _select(self, tokens: Tensor, k: int, ctx: Context) -> Tensor:
        """Pick ``k < n`` tokens per item.

        Parameters
        ----------
        tokens : Tensor
            ``(b, n, d)`` float32, finite.
        k : int
            ``1 <= k < n``.
        ctx : Context
            Validated context.

        Returns
        -------
        Tensor
            ``(b, k)`` int64 distinct indices in any order (the caller sorts them).
        """
        raise NotImplementedError


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


def finite_power_of_two_scaled(x: Tensor, what: str, method: str) -> Tensor:
    """:func:`power_of_two_scaled` of ``(b, n, d)`` tokens per item, and :func:`check_finite`.

    Both read one peak per item: a finite largest and smallest value mean every value is finite
    (NaN spreads into both), so the tokens are read twice in all (not four times) and the host
    once (not twice).
    """
    work = x.double() if x.dtype == torch.float64 else x.float()
    peak = _peak(work, (-2, -1))
    exponent = _exponent(peak)
    finite, scaled = torch.stack([torch.isfinite(peak).all(), exponent.any()]).tolist()
    if not finite:
        check_finite(work, what, method)  # raises, naming the count
    if scaled:
        return torch.ldexp(work.double(), -exponent.double()).float()
    return work.float()


def _peak(x: Tensor, dims: tuple[int, ...]) -> Tensor:
    """``|x|.amax(dims)`` (kept dims) without the temporary ``|x|``: two reductions, no copy."""
    return torch.maximum(x.amax(dim=dims, keepdim=True), x.amin(dim=dims, keepdim=True).neg())


def all_power_of_two_scaled(tensors: list[Tensor], dims: tuple[int, ...]) -> list[Tensor]:
    """:func:`power_of_two_scaled` for each of ``tensors``, with one host read for them all.

    Each host read stalls a GPU stream until it drains, so a batch of texts pays one, not one
    per item. A tensor repeated (a prompt shared by video frames) is scaled once and stays one
    tensor repeated.
    """
    distinct = list({id(x): x for x in tensors}.values())
    if len(distinct) < len(tensors):
        scaled = all_power_of_two_scaled(distinct, dims)
        by_id = {id(x): result for x, result in zip(distinct, scaled, strict=True)}
        return [by_id[id(x)] for x in tensors]
    if len(tensors) > 1 and dims == (-2, -1) and all(x.dim() == 2 for x in tensors):
        if _stackable(tensors):
            return _rows_power_of_two_scaled(tensors)
    works = [x.double() if x.dtype == torch.float64 else x.float() for x in tensors]
    exponents = {}
    for index, work in enumerate(works):
        if work.numel():
            exponents[index] = _exponent(_peak(work, dims))
    if not exponents or not _any_nonzero(list(exponents.values())):
        return [work.float() for work in works]
    return [
        torch.ldexp(work.double(), -exponents[index].double()).float()
        if index in exponents
        else work.float()
        for index, work in enumerate(works)
    ]


def _exponent(peak: Tensor) -> Tensor:
    """The power of two that brings ``peak`` into [0.5, 1), or 0 where it is within range."""
    finite = torch.where(torch.isfinite(peak), peak, torch.ones_like(peak))
    _, exponent = torch.frexp(finite)
    return torch.where(exponent.abs() > SAFE_EXPONENT, exponent, torch.zeros_like(exponent))


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
        0, owner, _peak(packed, (-1,)).squeeze(-1), "amax", include_self=True
    )
    exponents = _exponent(peaks)
    if not bool(exponents.any()):
        return unscaled()
    scaled = torch.ldexp(packed.double(), -exponents[owner].double().unsqueeze(-1)).float()
    return list(scaled.split(lengths))


def _any_nonzero(tensors: list[Tensor]) -> bool:
    """Whether any of ``tensors`` is non-zero: one host read where they share a device."""
    if len({tensor.device for tensor in tensors}) == 1:
        return bool(torch.stack([tensor.any() for tensor in tensors]).any())
    return any(bool(tensor.any()) for tensor in tensors)


#: Context fields that hold one entry per image (a leading batch dimension for a batch).
PER_ITEM_FIELDS = ("cls_attention", "vision_keys", "cls_state", "image_embeds")


def _with_batch_dim(ctx: Context) -> Context:
    """The per-image context of one ``(n, d)`` image with a leading batch dimension of 1."""
    changes = {}
    for name in PER_ITEM_FIELDS:
        value = getattr(ctx, name)
        if isinstance(value, Tensor):
            changes[name] = value.unsqueeze(0)
    return dataclasses.replace(ctx, **changes) if changes else ctx


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


def _scaled_context(ctx: Context) -> Context:
    text = ctx.text
    if isinstance(text, Tensor):
        text = power_of_two_scaled(text, dims=(-2, -1))
    elif text is not None:
        text = all_power_of_two_scaled(list(text), dims=(-2, -1))
    query = ctx.query
    if query is not None:
        query = power_of_two_scaled(query, dims=(-1,))
    # The vision-tower context is read as scale-free scores (cosines, ranks), so it passes as is.
    return dataclasses.replace(ctx, text=text, query=query)


def batch_rows(matrix: Tensor, index: Tensor) -> Tensor:
    """Return ``matrix[i, index[i], :]`` for every batch item: ``(b, n, m), (b,) -> (b, m)``."""
    return matrix[torch.arange(matrix.shape[0], device=matrix.device), index]


def unit_rows(x: Tensor) -> Tensor:
    """Rows scaled to unit L2 norm; an all-zero row stays zero. ``(..., d) -> (..., d)``."""
    return x / x.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)
