"""The ``Method`` contract shared by every selection method.

A method is a small dataclass of hyperparameters plus ``budget``. ``Method.select`` validates the
input, resolves the budget, upcasts to float32, and hands a ``(b, n, d)`` batch to the method's
vectorised ``_select``, which calls its pure core in :mod:`visprune.functional`. Everything a
method needs beyond the tokens (prompt text, a ready query) arrives in a :class:`Context`;
methods never see a model.

The exact contract (budget rules, ties, errors) is the methods page of the documentation,
``docs/methods/index.md``, with one page per method.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import ClassVar, Literal

import torch
from torch import Tensor

from ..compiled import compile_mode, compiled_core
from .budget import Budget, resolve_budget
from .checks import check_all_finite, check_finite, finite_power_of_two_scaled, token_batch
from .context import VISION_NEEDS, Context, scaled_context, with_batch_dim

Stage = Literal["vision", "llm", "layer"]


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
        batch = token_batch(tokens, self.name)
        b, n, d = batch.shape
        batch = finite_power_of_two_scaled(batch, "tokens", self.name)
        k = self.num_keep(n) if k is None else resolve_budget(k, n, self.name)
        if tokens.dim() == 2:
            ctx = with_batch_dim(ctx)
        self._check_context(ctx, b, d)
        ctx = scaled_context(ctx)
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
