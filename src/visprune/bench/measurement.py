"""The measurement itself: :func:`measure` and the untimed counts that go with it."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..api import active_handle
from ..compat import output_cache
from ..compiled import compile_mode
from ..flops.batch import batch_flops, kept_per_layer, kept_per_row, placeholder_mask
from ..methods import Method
from .environment import versions
from .result import BenchResult, Stat
from .timing import Clock, GenerateTimer, Intervals, time_calls


def measure(
    model: Any,
    inputs: dict,
    method: str | Method | None = None,
    budget: int | float | None = None,
    *,
    new_tokens: int = 16,
    warmup: int = 1,
    repeats: int = 5,
    progress: bool = True,
    generate_kwargs: dict | None = None,
    positions: str | None = None,
    compile: bool | str = False,
    **params: object,
) -> BenchResult:
    """Benchmark ``model`` on ``inputs``, unpruned or with ``method`` applied temporarily.

    Parameters
    ----------
    model : PreTrainedModel
        A ``...ForConditionalGeneration`` that :func:`visprune.apply` supports.
    inputs : dict
        Processor outputs (``input_ids``, pixel tensors, ``attention_mask`` ...) on the model's
        device.
    method : str or Method, optional
        ``None`` or ``"keepall"`` measures the unpruned model; otherwise the method is applied
        with :func:`visprune.apply` and removed afterwards, even on error.
    budget : int or float, optional
        Tokens to keep per image/frame (count or fraction).
    new_tokens : int
        Tokens generated for the decode timing (>= 2).
    warmup : int
        Untimed rounds before the timing (>= 0).
    repeats : int
        Timed rounds (>= 1); timings are medians with min/max.
    progress : bool
        Show a tqdm bar over the repeats.
    generate_kwargs : dict, optional
        Extra ``generate`` arguments (e.g. ``suppress_tokens``); greedy by default.
    positions : str or None, optional
        :func:`visprune.apply`'s option for the kept tokens' position ids, "compact" or
        "original" (default ``None``: the family's).
    compile : bool or str
        :func:`visprune.apply`'s option: the selection runs as one ``torch.compile`` graph. The
        first call per shape compiles; give ``warmup >= 1`` to keep that out of the timings.
    **params
        Hyperparameters of the method.

    Returns
    -------
    BenchResult
    """
    _check_arguments(model, inputs, new_tokens, warmup, repeats)
    chosen = resolve_method(method, budget, dict(params))
    mode = compile_mode(compile)  # a bad value fails before the model runs
    if mode is not None and chosen is None:
        raise ValueError("compile needs a method: the unpruned model has no selection to compile.")
    device = next(model.parameters()).device
    clock = Clock(device)
    vision, selecting = Intervals(clock), Intervals(clock)
    hooks = _time_vision_tower(model, vision)
    handle = None
    try:
        if chosen is not None:
            from ..api import apply

            handle = apply(model, chosen, positions=positions, compile=compile)
            _time_selection(handle, selecting)
        generate = GenerateTimer(model, inputs, clock, generate_kwargs)
        hooks.append(generate.hook())
        label = f"bench {chosen.name if chosen else 'keepall'}" if progress else None
        with torch.no_grad():
            prefill, decode, vision_times, select_times = _timed_rounds(
                generate, vision, selecting, new_tokens, warmup, repeats, label
            )
            peak = int(torch.cuda.max_memory_allocated(device)) if clock.cuda else None
            embeds, (cache_bytes, cache_length) = _cached_forward(model, inputs)
        selections = handle.selections if handle is not None else []
        visual = placeholder_mask(model, inputs["input_ids"])
        kept = kept_per_row(visual, selections)
        per_layer = kept_per_layer(model, visual, selections) if handle is not None else None
        flops = batch_flops(model, inputs, visual, kept, new_tokens, per_layer)
        alignment = None
        if handle is not None and embeds is not None:
            alignment = _alignment(embeds, visual, inputs.get("attention_mask"), selections)
    finally:
        for hook in hooks:
            hook.remove()
        if handle is not None:
            handle.method.__dict__.pop("select", None)
            handle.method.__dict__.pop("reduce", None)
            handle.remove()

    return BenchResult(
        method=chosen.name if chosen is not None else "keepall",
        params=chosen.params() if chosen is not None else {},
        device=str(device),
        new_tokens=new_tokens,
        repeats=repeats,
        warmup=warmup,
        alignment=alignment,
        prefill_s=Stat.of(prefill),
        decode_s_per_token=Stat.of(decode),
        vision_s=Stat.of(vision_times),
        select_s=Stat.of(select_times) if handle is not None else None,
        peak_memory_bytes=peak,
        kv_cache_bytes=cache_bytes,
        kv_cache_length=cache_length,
        visual_tokens_before=int(visual.sum()),
        visual_tokens_after=sum(kept),
        flops=flops,
        versions=versions(),
        compile=mode,
    )


def _check_arguments(model: Any, inputs: dict, new_tokens: int, warmup: int, repeats: int) -> None:
    for name, value, minimum in (
        ("new_tokens", new_tokens, 2),
        ("warmup", warmup, 0),
        ("repeats", repeats, 1),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}.")
    if "input_ids" not in inputs:
        raise ValueError("inputs must contain input_ids (a processor's output).")
    if active_handle(model) is not None:
        raise ValueError(
            "the model already has a visprune method applied; call handle.remove() first."
        )


def resolve_method(method: str | Method | None, budget: Any, params: dict) -> Method | None:
    """The method to measure (``None``: unpruned), built and its budget checked before the
    model is touched."""
    if method is None or (isinstance(method, str) and method.lower() == "keepall"):
        if budget is not None or params:
            raise ValueError("budget and method parameters need a method other than keepall.")
        return None
    from ..api import get_method

    if budget is not None:
        params = {**params, "budget": budget}
    chosen = get_method(method, **params)
    chosen.num_keep(1)  # validate the budget before touching the model
    return chosen


def _vision_module(model: Any) -> torch.nn.Module | None:
    base = getattr(model, "model", None)
    for name in ("vision_tower", "visual"):
        module = getattr(base, name, None)
        if isinstance(module, torch.nn.Module):
            return module
    return None


def _time_vision_tower(model: Any, vision: Intervals) -> list:
    """Hooks that time the vision tower's calls in ``vision`` (none if it has no tower)."""
    module = _vision_module(model)
    if module is None:
        return []
    return [
        module.register_forward_pre_hook(lambda *_: vision.start()),
        module.register_forward_hook(lambda *_: vision.stop()),
    ]


def _time_selection(handle: Any, selecting: Intervals) -> None:
    """Time the applied method's selection in ``selecting``: ``select`` (``reduce`` for a
    merging method such as VisionZip) and, for methods that prune inside the language model,
    the scores they measure there (one attention row, or key norms)."""
    time_calls(handle.method, "reduce" if handle.method.merges else "select", selecting)
    if handle.layer_pruner is not None:
        time_calls(handle.layer_pruner, "signals", selecting)


def _timed_rounds(
    generate: GenerateTimer,
    vision: Intervals,
    selecting: Intervals,
    new_tokens: int,
    warmup: int,
    repeats: int,
    label: str | None,
) -> tuple[list[float], list[float], list[float], list[float]]:
    """The warm-up, then the timed rounds (``label``: a tqdm bar over them): per round the time
    to first token, the decode time per token, and the vision and selection time."""
    prefill, decode, vision_times, select_times = [], [], [], []
    for _ in range(warmup):
        generate(1)
        generate(new_tokens)
    clock = generate.clock
    if clock.cuda:
        torch.cuda.reset_peak_memory_stats(clock.device)
    rounds: Any = range(repeats)
    if label is not None:
        from tqdm.auto import tqdm

        rounds = tqdm(rounds, desc=label)
    for _ in rounds:
        vision.reset()
        selecting.reset()
        first, _ = generate(1)
        vision_times.append(vision.total())
        select_times.append(selecting.total())
        _, per_token = generate(new_tokens)
        prefill.append(first)
        decode.append(per_token)
    return prefill, decode, vision_times, select_times


def _cached_forward(model: Any, inputs: dict) -> tuple[Tensor | None, tuple[int, int]]:
    """One untimed ``model(**inputs, use_cache=True)``: the language model's input embeddings
    (the full sequence, read before the pruning hook) and the KV cache's bytes and length."""
    seen: dict[str, Tensor] = {}

    def record(_module: Any, _args: tuple, kwargs: dict) -> None:
        seen.setdefault("embeds", kwargs.get("inputs_embeds"))

    capture = model.model.language_model.register_forward_pre_hook(
        record,
        with_kwargs=True,
        prepend=True,  # before the pruning hook: the full sequence
    )
    try:
        out = model(**inputs, use_cache=True)
    finally:
        capture.remove()
    cache = kv_cache_bytes(output_cache(out))
    del out
    return seen.get("embeds"), cache


def kv_cache_bytes(cache: Any) -> tuple[int, int]:
    """``(bytes, sequence length)`` of a ``past_key_values``: the sum of ``nbytes`` of every key
    and value tensor (a ``DynamicCache`` with ``.layers[i].keys/.values``, or legacy tuples)."""
    tensors: list[Tensor] = []
    if hasattr(cache, "layers"):
        for layer in cache.layers:
            for name in ("keys", "values"):
                value = getattr(layer, name, None)
                if isinstance(value, Tensor):
                    tensors.append(value)
    else:
        for layer in cache:
            tensors.extend(t for t in layer[:2] if isinstance(t, Tensor))
    total = sum(t.numel() * t.element_size() for t in tensors)
    length = int(tensors[0].shape[-2]) if tensors else 0
    return total, length


def _alignment(
    embeds: Tensor, visual: Tensor, mask: Tensor | None, selections: list
) -> dict[str, float]:
    """Mean :func:`visprune.metrics.alignment_report` over the images/frames of the last call,
    on the LLM input embeddings (the tokens the language model would have seen); the text is
    each sample's prompt after its last visual token."""
    from ..metrics import alignment_report

    totals: dict[str, list[float]] = {}
    for record in selections:
        row = record.sample
        tokens = embeds[row, record.candidates.to(embeds.device)]
        last = int(visual[row].nonzero().max())
        tail = torch.arange(last + 1, embeds.shape[1], device=embeds.device)
        if isinstance(mask, Tensor):
            tail = tail[mask[row, tail].bool()]
        text = embeds[row, tail] if len(tail) else None
        for key, value in alignment_report(tokens, record.kept, text).items():
            totals.setdefault(key, []).append(value)
    return {key: sum(values) / len(values) for key, values in totals.items()}
