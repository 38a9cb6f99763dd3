"""The public entry points: run a method on tokens (select) or on a model (apply -> Handle)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any

from torch import Tensor

from .compiled import compile_mode
from .handle import Handle, push, running_handle
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
        A new instance of the method's dataclass holding ``params`` (a given instance is not
        changed); its ``select`` picks tokens, and :func:`apply` runs it on a model.

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
    cls_attention: Tensor | None = None,
    image_embeds: Tensor | None = None,
    text_embeds: Tensor | Sequence[Tensor] | None = None,
    scores: Tensor | Sequence[Tensor] | None = None,
    text_scores: Tensor | Sequence[Tensor] | None = None,
    compile: bool | str = False,
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
    cls_attention : Tensor, optional
        VisPruner: the vision tower's CLS attention to each token, ``(H, n)`` or ``(n,)`` (a
        leading ``b`` for a batch).
    image_embeds : Tensor, optional
        CDPruner: ready CLIP embeddings of the patches ``(n, C)`` (``(b, n, C)`` for a batch),
        passed with ``text_embeds`` instead of ``text``.
    text_embeds : Tensor or sequence of Tensor, optional
        CDPruner: ready CLIP embeddings of the instruction ``(M, C)`` (for a batch, one shared
        tensor or a list of ``b``), passed with ``image_embeds`` instead of ``text``.
    scores : Tensor or sequence of Tensor, optional
        For the methods that prune inside the language model (``fastv``, ``pdrop``, ``dart``;
        required there): per-token scores ``(n,)`` / ``(b, n)`` that their layer measures (the
        attention each token receives, DART's key norms). Ignored by the other methods.
    text_scores : Tensor or sequence of Tensor, optional
        DART, with ``text`` when its text pivots are on: the key norms ``(m,)`` of the text
        tokens (a list of ``b`` for a batch), measured like ``scores``. Ignored by the other
        methods.
    compile : bool or str
        Run the method's selection core under ``torch.compile(fullgraph=True, dynamic=False)``
        (:mod:`visprune.compiled`): the first call per hyperparameters, shapes, device and dtype
        compiles (seconds), later calls reuse it. A string picks the torch.compile mode, e.g.
        ``"reduce-overhead"`` to capture CUDA graphs. Same picks as eager.
    **params
        Hyperparameters of the method (``gamma``, ``alpha``, ``tau``, ``seed`` ...).

    Returns
    -------
    Tensor
        int64 indices ``(k,)`` or ``(b, k)``, unique and ascending, on the input's device.

    Raises
    ------
    visprune.compiled.SelectionNotCompilable
        With ``compile``, for a method whose core does not run as one graph (it names the
        method; call it without ``compile`` instead).

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
    context = Context(
        text=_as_list(text),
        query=query,
        cls_attention=cls_attention,
        image_embeds=image_embeds,
        text_embeds=_as_list(text_embeds),
        scores=_as_list(scores),
        text_scores=_as_list(text_scores),
    )
    return chosen.select(tokens, None, context, compile=compile)


def _as_list(values: Tensor | Iterable[Tensor] | None) -> Tensor | list[Tensor] | None:
    """A tensor (or None) as it is; any other iterable of per-item tensors read once into a list
    (a generator can be passed, and the method may index it several times)."""
    return values if values is None or isinstance(values, Tensor) else list(values)


def active_handle(model: Any) -> Handle | None:
    """The handle whose method runs on ``model`` now, or ``None``."""
    return running_handle(unwrap_model(model))


def unwrap_model(model: Any) -> Any:
    """The transformers model inside a PEFT model or a ``torch.compile`` module.

    Hooks belong on the one model instance that runs, so that ``apply(compiled)`` and then
    ``apply(model)`` see the same model (and the second replaces the first) instead of stacking
    two adapters on it.
    """
    seen = set()
    while id(model) not in seen:
        seen.add(id(model))
        inner = model.__dict__.get("_orig_mod") if hasattr(model, "__dict__") else None
        if inner is None and hasattr(model, "_modules"):
            inner = model._modules.get("_orig_mod")
        if inner is not None:  # torch.compile's OptimizedModule
            model = inner
            continue
        if hasattr(model, "peft_config") and callable(getattr(model, "get_base_model", None)):
            model = model.get_base_model()
            continue
    return model


def apply(
    model: Any,
    method: str | Method,
    budget: int | float | None = None,
    *,
    positions: str | None = None,
    newlines: str = "candidates",
    compile: bool | str = False,
    **params: object,
) -> Handle:
    """Prune the visual tokens of a Hugging Face multimodal model, in place and reversibly.

    After this call, the unchanged ``model.generate(**inputs)`` and ``model(**inputs)`` run on
    the shortened sequence: the method picks ``budget`` tokens per image (per frame for video)
    and the others never reach the language model or its KV cache. Every call either prunes or
    raises (:class:`visprune.compat.PruningNotApplied` when a transformers seam moved); it never
    runs the full sequence silently.

    Parameters
    ----------
    model : PreTrainedModel
        A ``...ForConditionalGeneration`` whose ``config.model_type`` is ``llava``,
        ``llava_next``, ``llava_next_video``, ``llava_onevision``, ``qwen2_vl``, ``qwen2_5_vl``,
        ``qwen3_vl``, ``qwen3_vl_moe``, ``gemma3`` or ``internvl``; a PEFT model or a
        ``torch.compile`` module around one is unwrapped.
    method : str or Method
        A registered name or a ``Method`` instance.
    budget : int or float, optional
        Tokens to keep per image/frame: a count or a fraction of that image's tokens (for
        tiled images, InternVL's, of all its tiles together).
    positions : str or None, optional
        Renumber the kept tokens ("compact", as the published code does) or keep their original
        positions ("original"). Default ``None``: the family's mode, "compact" for LLaVA,
        LLaVA-NeXT, OneVision, InternVL and Gemma 3, "original" for Qwen-VL (its only mode, for
        M-RoPE). The methods that prune inside the language model (``fastv``, ``pdrop``,
        ``dart``) always keep the original positions and refuse "compact".
    newlines : {"candidates", "keep"}
        LLaVA-NeXT / OneVision: whether newline tokens compete for the budget (as published) or
        are always kept.
    compile : bool or str
        Run the method's selection under ``torch.compile(fullgraph=True, dynamic=False)``, as
        in :func:`select`: each new image size (and budget) compiles once, at its first call.
        A method whose core does not run as one graph raises
        :class:`visprune.compiled.SelectionNotCompilable` at that call.
    **params
        Hyperparameters of the method (``gamma``, ``alpha``, ``tau``, ``seed`` ...).

    Returns
    -------
    Handle
        ``handle.remove()`` restores the model; ``handle.selections`` records what was kept.
        Applying again to the same model suspends the previous handle until this one is removed.

    Warns
    -----
    UserWarning
        Once per process, when the installed transformers is outside the tested range.
    """
    from .adapters.needs import check_method
    from .compat import warn_if_untested

    model = unwrap_model(model)
    adapter_type = _adapter_type(model)
    warn_if_untested()
    chosen = _method_to_apply(method, budget, compile, params)
    adapter_type.check_options(model.config.model_type, positions, newlines)  # before any change
    check_method(adapter_type, model, chosen)  # e.g. CLS attention on a tower without CLS

    def build(current: Method):
        return adapter_type(model, current, positions=positions, newlines=newlines, compile=compile)

    return push(Handle(model, chosen, build))


def _adapter_type(model: Any) -> type:
    """The adapter class for ``model`` (unwrapped), or ``ValueError`` saying what to pass."""
    from . import adapters  # noqa: F401  (registers the adapters; imported only when needed)
    from .registry import ADAPTERS

    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in ADAPTERS:
        raise ValueError(
            f"visprune does not support model_type {model_type!r}; supported: "
            f"{', '.join(ADAPTERS.names())}."
        )
    if not hasattr(getattr(model, "model", None), "language_model"):
        raise ValueError(
            f"pass the full {type(model).__name__} with its language-model head (e.g. "
            "LlavaForConditionalGeneration), not a sub-module."
        )
    adapter_type = ADAPTERS[model_type]
    if not adapter_type.supports_class(model):
        # Another head (e.g. Gemma3ForSequenceClassification) has another loss and outputs.
        supported = sorted(
            {name for kind in ADAPTERS.names() for name in ADAPTERS[kind].model_classes}
        )
        raise ValueError(
            f"visprune does not support {type(model).__name__}; it prunes the "
            f"generation models {', '.join(supported)}."
        )
    return adapter_type


def _method_to_apply(
    method: str | Method, budget: int | float | None, compile: bool | str, params: dict
) -> Method:
    """The method :func:`apply` runs, its budget and ``compile`` checked before any call."""
    if budget is not None:
        params["budget"] = budget
    chosen = get_method(method, **params)
    chosen.num_keep(1)  # validate the budget now, not at the first call
    if compile_mode(compile) is not None and chosen.merges:
        raise ValueError(
            f"{chosen.name} merges tokens, and compile=True compiles selection methods only; "
            "apply it without compile."
        )
    return chosen
