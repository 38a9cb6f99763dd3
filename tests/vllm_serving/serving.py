"""Run the bundled demo checkpoint through vLLM and through transformers on the same questions.

Helpers of the vLLM tests and of ``benchmarks/serving.py``'s smoke check. vLLM starts its engine
in a separate process, so the entry points that create an ``LLM`` are called from tests only.
"""

from __future__ import annotations

import gc
from collections.abc import Sequence

import torch

import visprune
from visprune.demo import model as demo_model
from visprune.demo import task
from visprune.demo.run import bundled_checkpoint
from visprune.demo.train import Encoder

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


def questions(count: int) -> list[task.Sample]:
    return task.make_split(0, "test", count)


def prompt_ids(sample: task.Sample, encoder: Encoder, *, expanded: bool) -> list[int]:
    """The demo prompt ``question <image> question``, the image as one token or all 64."""
    question = encoder.words(sample.question)
    image = [encoder.image] * (task.NUM_CELLS if expanded else 1)
    return question + image + question


def override(method: str | None, **params) -> dict:
    if method is None:
        return {}
    return {"hf_overrides": {"visprune": {"method": method, "budget": BUDGET, **params}}}


def answer_ids(ids: Sequence[int], eos: int) -> list[int]:
    """Generated ids up to and including the first end of sequence."""
    ids = list(ids)
    return ids[: ids.index(eos) + 1] if eos in ids else ids


def serve(samples: Sequence[task.Sample], method: str | None, **engine) -> list[dict]:
    """Greedy answers of vLLM for ``samples``: per question ``answer`` ids and ``prompt_tokens``
    (the prompt length vLLM reports)."""
    from vllm import LLM, SamplingParams

    encoder = Encoder()
    llm = LLM(model=str(bundled_checkpoint()), **{**ENGINE, **override(method), **engine})
    try:
        requests = [
            {
                "prompt_token_ids": prompt_ids(sample, encoder, expanded=False),
                "multi_modal_data": {"image": sample.pil()},
            }
            for sample in samples
        ]
        outputs = llm.generate(
            requests, SamplingParams(temperature=0.0, max_tokens=MAX_NEW_TOKENS), use_tqdm=False
        )
        return [
            {
                "answer": answer_ids(output.outputs[0].token_ids, encoder.eos),
                "prompt_tokens": len(output.prompt_token_ids),
            }
            for output in outputs
        ]
    finally:
        del llm
        gc.collect()


def reference(samples: Sequence[task.Sample], method: str | None, batch: int = 50) -> list[dict]:
    """The same questions through transformers and ``visprune.apply(..., positions="compact")``:
    per question ``answer`` ids, ``prompt_tokens`` (full prompt) and ``kept`` visual tokens."""
    model, processor = demo_model.load(bundled_checkpoint())
    encoder = Encoder(processor.tokenizer)
    handle = None
    if method is not None:
        handle = visprune.apply(model, method, budget=BUDGET, positions="compact")
    results = []
    try:
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
    finally:
        if handle is not None:
            handle.remove()
    return results
