"""Measure what pruning buys on a real model: latency, KV cache, visual tokens and FLOPs.

:func:`measure` runs one model on one batch of processor inputs, unpruned or with a method
applied for the duration of the measurement, and returns a :class:`BenchResult`
(:mod:`~visprune.bench.result`; its timers are in :mod:`~visprune.bench.timing`).

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
    :func:`visprune.flops.describe_rows` (:mod:`visprune.flops.batch` sums the rows).

On CUDA, timings use ``torch.cuda.Event`` pairs read after a synchronize; on CPU,
``time.perf_counter``. Everything runs under ``torch.no_grad()``.
"""

from .environment import machine_description
from .measurement import kv_cache_bytes, measure, resolve_method
from .result import BenchResult, Stat, format_table

__all__ = [
    "BenchResult",
    "Stat",
    "format_table",
    "kv_cache_bytes",
    "machine_description",
    "measure",
    "resolve_method",
]
