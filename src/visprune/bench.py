"""Measure what pruning buys on a real model: latency, KV cache, visual tokens and FLOPs.

:func:`measure` runs one model on one batch of processor inputs, unpruned or with a method
applied for the duration of the measurement, and returns a :class:`BenchResult`.

What each number is and how it is taken (``r`` repeats after ``warmup`` untimed rounds; every
timing is a median with its min/max over the repeats):

``prefill_s``
    Time to first token: wall time of ``model.generate(**inputs, max_new_tokens=1)``. It covers
    the vision encoder, the projector, the method's selection and the language-model prefill.
``decode_s_per_token``
    In one ``generate(new_tokens)`` call: the time from the start of the first decode step (the
    language model's second call, marked by a forward pre-hook) to the end of the call, divided
    by ``new_tokens - 1``; ``min_new_tokens`` is forced so that no end-of-sequence token stops a
    run early. One call, not a difference of two noisy calls.
``vision_s``
    Time inside the vision tower (``model.model.vision_tower`` for the LLaVA families,
    ``model.model.visual`` for Qwen-VL) during the ``generate(1)`` call, taken with a forward
    pre-hook/hook pair on that module, summed over its calls. Module hooks are used instead of
    wrapping ``get_image_features`` because the adapters wrap that method on the instance
    themselves; the hooks work with and without a handle. The projector is not included.
``select_s``
    Time inside ``handle.method.select`` (``reduce`` for a merging method) during the
    ``generate(1)`` call (the method instance's ``select`` is wrapped for the measurement,
    summed over images/frames), plus, for methods that prune inside the language model, the
    time measuring their scores there (recomputing the attention row or key norms of one
    layer). ``None`` unpruned.
``peak_memory_bytes``
    ``torch.cuda.max_memory_allocated`` over the timed runs on CUDA; ``None`` on CPU (process
    RSS cannot isolate one call). :attr:`BenchResult.kv_cache_bytes` is exact on every device.
``kv_cache_bytes``
    Sum of ``nbytes`` of every key and value tensor in the ``past_key_values`` of one
    ``model(**inputs, use_cache=True)`` forward (untimed): proportional to the kept sequence
    length.
``visual_tokens_before`` / ``visual_tokens_after``
    Pruned: ``sum(s.n)`` and ``sum(len(s.kept))`` (plus merged tokens) over
    ``handle.selections``. Unpruned: the
    image/video placeholder tokens in ``input_ids`` (both fields).
``alignment``
    Pruned runs: the mean over images/frames of :func:`visprune.metrics.alignment_report` (W2,
    coverage, and relevance to the prompt after the image) between each image's candidate
    tokens and the kept ones, on the LLM input embeddings of an untimed forward.
``flops``
    :func:`visprune.flops.model_flops` per batch row, summed: ``prefill`` (``logits="last"``) and
    ``decode`` (``new_tokens - 1`` steps), vision tower and projector included for images and
    videos of every family. Each row's images, videos, tiles and Qwen grids come from
    :func:`visprune.flops_inputs.describe_rows`.

On CUDA, timings use ``torch.cuda.Event`` pairs read after a synchronize; on CPU,
``time.perf_counter``. Everything runs under ``torch.no_grad()``.
"""

from __future__ import annotations

import dataclasses
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .api import active_handle
from .compat import output_cache
from .compiled import compile_mode
from .methods import Method

__all__ = ["BenchResult", "Stat", "kv_cache_bytes", "measure"]


@dataclass(frozen=True)
class Stat:
    """Median and spread of one timing over the repeats, in seconds."""

    median: float
    min: float
    max: float
    samples: tuple[float, ...]

    @classmethod
    def of(cls, samples: list[float]) -> Stat:
        return cls(statistics.median(samples), min(samples), max(samples), tuple(samples))

    def to_dict(self) -> dict[str, Any]:
        return {
            "median": self.median,
            "min": self.min,
            "max": self.max,
            "samples": list(self.samples),
        }


@dataclass
class BenchResult:
    """One :func:`measure` run. See the module docstring for how each field is measured."""

    method: str
    params: dict[str, Any]
    device: str
    new_tokens: int
    repeats: int
    warmup: int
    prefill_s: Stat
    decode_s_per_token: Stat
    vision_s: Stat
    select_s: Stat | None
    peak_memory_bytes: int | None
    kv_cache_bytes: int
    kv_cache_length: int
    visual_tokens_before: int
    visual_tokens_after: int
    flops: dict[str, Any]
    versions: dict[str, str] = field(default_factory=dict)
    alignment: dict[str, float] | None = None
    #: The torch.compile mode the selection ran under, or ``None`` (eager).
    compile: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict of every field."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = value.to_dict() if isinstance(value, Stat) else value
        return out

    def ratio_to(self, other: BenchResult) -> dict[str, float | None]:
        """Speed-ups and savings of ``self`` relative to ``other`` (typically the unpruned run):
        ``other / self`` for times and sizes, so values above 1 mean ``self`` is cheaper."""

        def ratio(a: float | None, b: float | None) -> float | None:
            return None if a is None or b is None or b == 0 else a / b

        return {
            "prefill_speedup": ratio(other.prefill_s.median, self.prefill_s.median),
            "decode_speedup": ratio(
                other.decode_s_per_token.median, self.decode_s_per_token.median
            ),
            "kv_cache_reduction": ratio(other.kv_cache_bytes, self.kv_cache_bytes),
            "prefill_flops_reduction": ratio(
                other.flops.get("prefill_total"), self.flops.get("prefill_total")
            ),
            "visual_token_reduction": ratio(other.visual_tokens_after, self.visual_tokens_after),
        }


def machine_description() -> str:
    """CPU model (or platform), torch threads and versions: the header of a results file."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    # The vector instructions torch's CPU kernels use (AVX2, AVX512 ...): CPUs of one name
    # differ in them, and fast GEMM changes which share of a selection is per-pick overhead.
    capability = torch.backends.cpu.get_cpu_capability()
    gpu = f"; GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return (
        f"{cpu} ({capability}){gpu}; {torch.get_num_threads()} torch threads; Python "
        f"{platform.python_version()}; torch {torch.__version__}; {platform.system()} "
        f"{platform.release()}"
    )


def _versions() -> dict[str, str]:
    import transformers

    from . import __version__

    return {
        "visprune": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }


class _Clock:
    """Interval timer: CUDA events on a CUDA device, ``perf_counter`` otherwise."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.device = device

    def mark(self) -> Any:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record(torch.cuda.current_stream(self.device))
            return event
        return time.perf_counter()

    def seconds(self, start: Any, end: Any) -> float:
        """Seconds between two marks; call after the work is done (synchronizes on CUDA)."""
        if self.cuda:
            torch.cuda.synchronize(self.device)
            return start.elapsed_time(end) / 1000.0
        return end - start


class _Intervals:
    """Collects (start, end) marks of repeated intervals; ``total()`` sums them."""

    def __init__(self, clock: _Clock) -> None:
        self.clock = clock
        self.marks: list[tuple[Any, Any]] = []
        self._open: list[Any] = []

    def start(self) -> None:
        self._open.append(self.clock.mark())

    def stop(self) -> None:
        if self._open:
            self.marks.append((self._open.pop(), self.clock.mark()))

    def reset(self) -> None:
        self.marks.clear()
        self._open.clear()

    def total(self) -> float:
        return sum(self.clock.seconds(a, b) for a, b in self.marks)


def _vision_module(model: Any) -> torch.nn.Module | None:
    base = getattr(model, "model", None)
    for name in ("vision_tower", "visual"):
        module = getattr(base, name, None)
        if isinstance(module, torch.nn.Module):
            return module
    return None


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


def _token_ids(config: Any) -> list[int]:
    ids = []
    for name in ("image_token_id", "image_token_index", "video_token_id", "video_token_index"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value not in ids:
            ids.append(value)
    return ids


def _placeholders(model: Any, input_ids: Tensor) -> Tensor:
    mask = torch.zeros_like(input_ids, dtype=torch.bool)
    for token in _token_ids(model.config):
        mask |= input_ids == token
    return mask


def _kept_per_layer(model: Any, visual: Tensor, selections: list) -> list[list[int]] | None:
    """Per row, the visual tokens each decoder layer sees at prefill, for methods that prune
    inside the language model (``Selection.stages``); ``None`` for the other methods."""
    if not any(s.layer is not None for s in selections):
        return None
    layers = model.config.text_config.num_hidden_layers
    counts = [[int(v)] * layers for v in visual.sum(dim=1)]
    for s in selections:
        for number in range(layers):
            earlier = [kept for layer, kept in s.stages if layer <= number]
            if earlier:
                counts[s.sample][number] -= int(s.n) - len(earlier[-1])
    return counts


def _flops(
    model: Any,
    inputs: dict,
    visual: Tensor,
    kept_per_row: list[int],
    new_tokens: int,
    per_layer: list[list[int]] | None = None,
) -> dict[str, Any]:
    from .flops import model_flops
    from .flops_inputs import describe_rows

    config = model.config
    ids = inputs["input_ids"]
    mask = inputs.get("attention_mask")
    totals = {"prefill_total": 0.0, "decode_total": 0.0}
    parts: dict[str, dict[str, float]] = {"prefill": {}, "decode": {}}
    for row, described in enumerate(describe_rows(config, inputs)):
        n_visual = int(visual[row].sum())
        length = int(mask[row].sum()) if isinstance(mask, Tensor) else ids.shape[1]
        layers = {} if per_layer is None else {"layer_kept_visual_tokens": per_layer[row]}
        counts = model_flops(
            config,
            n_visual,
            length - n_visual,
            decode_steps=new_tokens - 1,
            kept_visual_tokens=kept_per_row[row],
            logits="last",
            **described,
            **layers,
        )
        for stage, breakdown in counts.items():
            totals[f"{stage}_total"] += breakdown.total
            for name, value in dataclasses.asdict(breakdown).items():
                parts[stage][name] = parts[stage].get(name, 0.0) + float(value)
    return {**totals, **parts}


def _alignment(
    embeds: Tensor, visual: Tensor, mask: Tensor | None, selections: list
) -> dict[str, float]:
    """Mean :func:`visprune.metrics.alignment_report` over the images/frames of the last call,
    on the LLM input embeddings (the tokens the language model would have seen); the text is
    each sample's prompt after its last visual token."""
    from .metrics import alignment_report

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


def _resolve(method: str | Method | None, budget: Any, params: dict) -> Method | None:
    if method is None or (isinstance(method, str) and method.lower() == "keepall"):
        if budget is not None or params:
            raise ValueError("budget and method parameters need a method other than keepall.")
        return None
    from .api import get_method

    if budget is not None:
        params = {**params, "budget": budget}
    chosen = get_method(method, **params)
    chosen.num_keep(1)  # validate the budget before touching the model
    return chosen


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
    warmup, repeats : int
        Untimed rounds, then timed rounds (>= 1); timings are medians with min/max.
    progress : bool
        Show a tqdm bar over the repeats.
    generate_kwargs : dict, optional
        Extra ``generate`` arguments (e.g. ``suppress_tokens``); greedy by default.
    positions : {"compact", "original"}, optional
        :func:`visprune.apply`'s option for the kept tokens' position ids (default: the
        family's).
    compile : bool or str
        :func:`visprune.apply`'s option: the selection runs as one ``torch.compile`` graph. The
        first call per shape compiles; give ``warmup >= 1`` to keep that out of the timings.
    **params
        Hyperparameters of the method.

    Returns
    -------
    BenchResult
    """
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
    chosen = _resolve(method, budget, dict(params))
    mode = compile_mode(compile)  # a bad value fails before the model runs
    if mode is not None and chosen is None:
        raise ValueError("compile needs a method: the unpruned model has no selection to compile.")
    device = next(model.parameters()).device
    clock = _Clock(device)
    vision = _Intervals(clock)
    selecting = _Intervals(clock)
    gen = {"do_sample": False, **(generate_kwargs or {})}
    for key in ("max_new_tokens", "min_new_tokens"):
        gen.pop(key, None)

    hooks = []
    module = _vision_module(model)
    if module is not None:
        hooks.append(module.register_forward_pre_hook(lambda *_: vision.start()))
        hooks.append(module.register_forward_hook(lambda *_: vision.stop()))

    handle = None
    try:
        if chosen is not None:
            from .api import apply

            handle = apply(model, chosen, positions=positions, compile=compile)
            # A merging method (VisionZip) runs through reduce instead of select.
            entry = "reduce" if handle.method.merges else "select"
            original: Callable = getattr(handle.method, entry)

            def timed_select(*args: Any, **kwargs: Any) -> Any:
                selecting.start()
                try:
                    return original(*args, **kwargs)
                finally:
                    selecting.stop()

            setattr(handle.method, entry, timed_select)
            # Methods that prune inside the language model also measure their scores there
            # (one attention row, or key norms): timed as part of the selection.
            pruner = getattr(handle._adapter, "layer_pruner", None)
            if pruner is not None:
                measure_scores: Callable = pruner.signals

                def timed_signals(*args: Any, **kwargs: Any) -> Any:
                    selecting.start()
                    try:
                        return measure_scores(*args, **kwargs)
                    finally:
                        selecting.stop()

                pruner.signals = timed_signals  # type: ignore[method-assign]
        step_starts: list[Any] = []
        hooks.append(
            model.model.language_model.register_forward_pre_hook(
                lambda *_: step_starts.append(clock.mark())
            )
        )

        def generate(n: int) -> tuple[float, float]:
            """Wall time of one generate call, and its decode time per token: from the start of
            the first decode step (the language model's second call) to the end, over n - 1."""
            step_starts.clear()
            start = clock.mark()
            model.generate(**inputs, max_new_tokens=n, min_new_tokens=n, **gen)
            end = clock.mark()
            per_token = 0.0
            if n > 1 and len(step_starts) >= 2:
                per_token = clock.seconds(step_starts[1], end) / (n - 1)
            return clock.seconds(start, end), per_token

        prefill, decode, vision_times, select_times = [], [], [], []
        peak = None
        with torch.no_grad():
            for _ in range(warmup):
                generate(1)
                generate(new_tokens)
            if clock.cuda:
                torch.cuda.reset_peak_memory_stats(device)
            rounds = range(repeats)
            if progress:
                from tqdm.auto import tqdm

                rounds = tqdm(rounds, desc=f"bench {chosen.name if chosen else 'keepall'}")
            for _ in rounds:
                vision.reset()
                selecting.reset()
                first, _ = generate(1)
                vision_times.append(vision.total())
                select_times.append(selecting.total())
                _, per_token = generate(new_tokens)
                prefill.append(first)
                decode.append(per_token)
            if clock.cuda:
                peak = int(torch.cuda.max_memory_allocated(device))
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
            cache_bytes, cache_length = kv_cache_bytes(output_cache(out))
            del out

        visual = _placeholders(model, inputs["input_ids"])
        # Every placeholder token counts, candidates or not (OneVision's video newline and
        # newlines under newlines="keep" are always kept), so pruned and unpruned counts compare.
        kept_per_row = [int(v) for v in visual.sum(dim=1)]
        before = sum(kept_per_row)
        if handle is not None:
            selections = handle.selections
            for s in selections:
                merged = 0 if s.merged_positions is None else len(s.merged_positions)
                kept_per_row[s.sample] -= int(s.n) - len(s.kept) - merged
        after = sum(kept_per_row)
        per_layer = _kept_per_layer(model, visual, selections) if handle is not None else None
        flops = _flops(model, inputs, visual, kept_per_row, new_tokens, per_layer)
        alignment = None
        if handle is not None and seen.get("embeds") is not None:
            alignment = _alignment(seen["embeds"], visual, inputs.get("attention_mask"), selections)
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
        visual_tokens_before=before,
        visual_tokens_after=after,
        flops=flops,
        versions=_versions(),
        compile=mode,
    )


def _alignment_text(alignment: dict[str, float] | None) -> str:
    if not alignment:
        return "- (unpruned)"
    return ", ".join(f"{key} {value:.4f}" for key, value in alignment.items())


def format_table(result: BenchResult) -> str:
    """A readable two-column summary of a :class:`BenchResult`."""

    def ms(stat: Stat | None) -> str:
        if stat is None:
            return "-"
        return f"{stat.median * 1e3:.2f} ms  [{stat.min * 1e3:.2f} .. {stat.max * 1e3:.2f}]"

    params = ", ".join(f"{k}={v!r}" for k, v in result.params.items()) or "-"
    peak = (
        "-" if result.peak_memory_bytes is None else f"{result.peak_memory_bytes / 2**20:.1f} MiB"
    )
    rows = [
        ("method", f"{result.method} ({params})"),
        ("device", result.device),
        ("visual tokens", f"{result.visual_tokens_before} -> {result.visual_tokens_after}"),
        ("time to first token", ms(result.prefill_s)),
        ("decode / token", ms(result.decode_s_per_token)),
        ("vision tower", ms(result.vision_s)),
        (
            "selection",
            ms(result.select_s) + (f"  compiled: {result.compile}" if result.compile else ""),
        ),
        ("KV cache", f"{result.kv_cache_bytes / 2**20:.3f} MiB ({result.kv_cache_length} pos)"),
        ("peak memory", peak if result.peak_memory_bytes is not None else "- (CPU)"),
        ("prefill GFLOPs", f"{result.flops['prefill_total'] / 1e9:.3f}"),
        ("alignment", _alignment_text(result.alignment)),
        ("decode GFLOPs", f"{result.flops['decode_total'] / 1e9:.3f}"),
        ("repeats", f"{result.repeats} (+{result.warmup} warm-up), {result.new_tokens} tokens"),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name.ljust(width)}  {value}" for name, value in rows)
