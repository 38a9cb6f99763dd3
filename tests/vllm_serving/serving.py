"""Serve requests through vLLM (:func:`serve_prompts`, every vLLM test's engine), run the bundled
demo checkpoint through vLLM and through transformers on the same questions, and process requests
with vLLM's multimodal processor alone (:func:`processed`).

Helpers of the vLLM tests; the functions that create an ``LLM`` are called from tests only.
"""

from __future__ import annotations

import contextlib
import gc
import os
from collections.abc import Iterator, Sequence

import torch

from transformers_reference import applied
from visprune.demo import model as demo_model
from visprune.demo import task
from visprune.demo.evaluate import Encoder
from visprune.demo.run import bundled_checkpoint

BUDGET = 7  # of the demo's 64 tokens per image
MAX_NEW_TOKENS = 2  # the demo's answers are one word, then the end of sequence
ENGINE = {
    "dtype": "float32",
    "enforce_eager": True,
    # On CPU, vLLM sizes its KV cache from a share of the RAM minus its own footprint, which
    # varies; a fixed 256 MiB holds every test's requests.
    "gpu_memory_utilization": 0.1,
    "kv_cache_memory_bytes": 256 * 2**20,
    "max_model_len": 256,
}


#: vLLM's switch between an engine in its own processes and one in the caller's.
IN_PROCESS = "VLLM_ENABLE_V1_MULTIPROCESSING"

#: Two ranks, one core each (vLLM's CPU workers refuse to start without one core, or NUMA node,
#: per rank): each holds half the heads, half the vision tower and half the embedding table.
TENSOR_PARALLEL = {"tensor_parallel_size": 2, "distributed_executor_backend": "mp"}
THREADS_BIND = {"VLLM_CPU_OMP_THREADS_BIND": "0|1"}


def questions(count: int) -> list[task.Sample]:
    return task.make_split(0, "test", count)


def prompt_ids(sample: task.Sample, encoder: Encoder, *, expanded: bool) -> list[int]:
    """The demo prompt ``question <image> question``, the image as one token or all 64."""
    question = encoder.words(sample.question)
    image = [encoder.image] * (task.NUM_CELLS if expanded else 1)
    return question + image + question


@contextlib.contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """``values`` set in ``os.environ`` (which vLLM's worker processes inherit), restored after;
    vLLM's cache of its environment variables is dropped on entry and exit."""
    from vllm import envs

    before = {name: os.environ.get(name) for name in values}
    envs.disable_envs_cache()
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        envs.disable_envs_cache()


def multi_modal_data(request: dict) -> dict:
    """A request's image or video as vLLM takes it (a video with its metadata if it has one)."""
    data = {}
    if "image" in request:
        data["image"] = request["image"]
    if "video" in request:
        video = request["video"]
        data["video"] = (video, request["metadata"]) if "metadata" in request else video
    return data


def serve_prompts(
    model_dir,
    requests: Sequence[dict],
    settings: dict | None,
    steps: int,
    *,
    in_process: bool = True,
    tensor_parallel: bool = False,
    **engine,
) -> list[dict]:
    """vLLM's greedy continuation of each request: ``answer`` ids (``steps`` of them, past the
    end of sequence), ``prompt_tokens`` (the prompt length vLLM reports) and the first step's
    top-5 ``logprobs`` ({id: logprob}).

    Parameters
    ----------
    model_dir : path
        A checkpoint in the Hub layout.
    requests : sequence of dict
        ``prompt`` (text) or ``prompt_token_ids``; ``image`` or ``video`` (with ``metadata``
        where the family takes it); optionally ``options`` (the processor's keyword arguments).
    settings : dict, optional
        The ``visprune`` override (``None``: vLLM unpatched).
    in_process : bool
        The engine core runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``): it starts
        in seconds, where spawning its process (which imports vLLM anew) takes a minute or two
        here. ``False``: in its own process, as served, the requests crossing to it.
    tensor_parallel : bool
        Two ranks in vLLM's own worker processes (which load visprune through the
        ``vllm.general_plugins`` entry point), one core each. Every rank's selections are
        recorded, and the answers are returned only if all ranks kept the same rows.
    **engine
        ``LLM`` options over :data:`ENGINE`.
    """
    from vllm import LLM, SamplingParams

    options = {**ENGINE, **engine}
    if settings is not None:
        options["hf_overrides"] = {"visprune": settings}
    variables = {}
    if tensor_parallel:
        options.update(TENSOR_PARALLEL)
        variables.update(THREADS_BIND)
        # The recording functions reach a spawned engine core pickled.
        variables["VLLM_ALLOW_INSECURE_SERIALIZATION"] = "1"
    if in_process:
        variables[IN_PROCESS] = "0"
        options.setdefault("distributed_executor_backend", "uni")
    with environment(variables):
        llm = LLM(model=str(model_dir), **options)
        try:
            if tensor_parallel:
                record, recorded = rank_recorders()
                llm.collective_rpc(record)
            outputs = llm.generate(
                [
                    {
                        **{k: r[k] for k in ("prompt", "prompt_token_ids") if k in r},
                        "multi_modal_data": multi_modal_data(r),
                        "mm_processor_kwargs": r.get("options", {}),
                    }
                    for r in requests
                ],
                SamplingParams(temperature=0.0, max_tokens=steps, logprobs=5, ignore_eos=True),
                use_tqdm=False,
            )
            if tensor_parallel:
                assert_ranks_agree(llm.collective_rpc(recorded))
            return [
                {
                    "answer": list(output.outputs[0].token_ids),
                    "prompt_tokens": len(output.prompt_token_ids),
                    "logprobs": {t: p.logprob for t, p in output.outputs[0].logprobs[0].items()},
                }
                for output in outputs
            ]
        finally:
            del llm
            gc.collect()


def rank_recorders():
    """Two functions for ``LLM.collective_rpc``: the first makes each rank's model keep a copy
    of every multimodal embedding it returns (the kept rows of each image or video), the
    second returns them. Defined here, inside a function, so that they travel to vLLM's worker
    processes by value (a module-level function would be imported there by name)."""

    def record(worker) -> None:
        model = worker.model_runner.get_model()
        embed = model.embed_multimodal
        kept = []

        def recording(**kwargs):
            rows = embed(**kwargs)
            kept.extend(item.detach().clone() for item in rows)
            return rows

        model.embed_multimodal = recording
        model.visprune_recorded = kept

    def recorded(worker) -> list:
        return worker.model_runner.get_model().visprune_recorded

    return record, recorded


def assert_ranks_agree(per_rank: list[list[torch.Tensor]]) -> None:
    """Every rank returned the same multimodal embeddings, bit for bit: it selected the same
    rows (a rank that read only its shard of the embedding table, or drew its own random
    numbers, would keep others)."""
    first, *others = per_rank
    assert first, "no multimodal embeddings were recorded"
    for rank, items in enumerate(others, start=1):
        assert len(items) == len(first), f"rank {rank}: {len(items)} items, rank 0: {len(first)}"
        for number, (mine, theirs) in enumerate(zip(items, first, strict=True)):
            assert mine.shape == theirs.shape and torch.equal(mine, theirs), (rank, number)


def answer_ids(ids: Sequence[int], eos: int) -> list[int]:
    """Generated ids up to and including the first end of sequence."""
    ids = list(ids)
    return ids[: ids.index(eos) + 1] if eos in ids else ids


def demo_requests(samples: Sequence[task.Sample]) -> list[dict]:
    """The demo questions as vLLM requests: prompt ids with the image as one placeholder."""
    encoder = Encoder()
    return [
        {"prompt_token_ids": prompt_ids(sample, encoder, expanded=False), "image": sample.pil()}
        for sample in samples
    ]


def serve(samples: Sequence[task.Sample], method: str | None, **engine) -> list[dict]:
    """Greedy answers of vLLM on the bundled checkpoint for ``samples``: per question
    ``answer`` ids (up to the end of sequence) and ``prompt_tokens`` (as vLLM reports it).
    ``engine``: :func:`serve_prompts`'s options."""
    settings = None if method is None else {"method": method, "budget": BUDGET}
    served = serve_prompts(
        bundled_checkpoint(), demo_requests(samples), settings, MAX_NEW_TOKENS, **engine
    )
    eos = Encoder().eos
    return [{**result, "answer": answer_ids(result["answer"], eos)} for result in served]


def reference(samples: Sequence[task.Sample], method: str | None, batch: int = 50) -> list[dict]:
    """The same questions through transformers and ``visprune.apply(..., positions="compact")``:
    per question ``answer`` ids, ``prompt_tokens`` (full prompt) and ``kept`` visual tokens."""
    model, processor = demo_model.load(bundled_checkpoint())
    encoder = Encoder(processor.tokenizer)
    settings = None if method is None else {"method": method, "budget": BUDGET}
    results = []
    with applied(model, settings, positions="compact") as handle:
        for start in range(0, len(samples), batch):
            chunk = samples[start : start + batch]
            prompts = [prompt_ids(sample, encoder, expanded=True) for sample in chunk]
            width = max(map(len, prompts))
            ids = torch.tensor([[encoder.pad] * (width - len(p)) + p for p in prompts])
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
            pixels = processor.image_processor(
                [sample.pil() for sample in chunk], return_tensors="pt"
            )["pixel_values"]
            with torch.no_grad():
                out = model.generate(
                    input_ids=ids,
                    attention_mask=mask,
                    pixel_values=pixels,
                    max_new_tokens=MAX_NEW_TOKENS,
                    do_sample=False,
                )
            kept = [task.NUM_CELLS] * len(chunk)
            if handle is not None:
                kept = [len(selection.kept) for selection in handle.selections]
            for row, prompt in enumerate(prompts):
                results.append(
                    {
                        "answer": answer_ids(out[row, width:].tolist(), encoder.eos),
                        "prompt_tokens": len(prompt),
                        "kept": kept[row],
                    }
                )
    return results


def processed(directory, requests, override):
    """vLLM's processor output (``prompt_token_ids``, ``mm_placeholders``) per request."""
    from transformers import AutoTokenizer
    from vllm.config import ModelConfig
    from vllm.multimodal import MULTIMODAL_REGISTRY
    from vllm.multimodal.processing.context import TimingContext
    from vllm.multimodal.processing.inputs import ProcessorInputs

    from visprune.integrations.vllm import register

    register()
    config = ModelConfig(
        model=str(directory), dtype="float32", max_model_len=512, hf_overrides=override
    )
    processor = MULTIMODAL_REGISTRY.create_processor(config)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    outputs = []
    for request in requests:
        ids = tokenizer(request["prompt"], add_special_tokens=False)["input_ids"]
        media = {k: [v] for k, v in request.items() if k in ("image", "video")}
        inputs = ProcessorInputs(
            ids,
            processor.info.parse_mm_data(media),
            hf_processor_mm_kwargs=request.get("options", {}),
        )
        outputs.append(processor.apply(inputs, TimingContext()))
    return outputs
