"""A tiny LLaVA-NeXT (:func:`family_checkpoints.write_tiny_llava_next`) served by vLLM and run
through transformers on the same requests: images of several sizes, so several anyres grids.

Helpers of the vLLM tests; the functions that create an ``LLM`` are called from tests only.
"""

from __future__ import annotations

import numpy as np

from serving import serve_prompts
from transformers_reference import applied, assert_equal, greedy

#: Greedy steps of the CLS-score and vision-stage checks (:func:`assert_next_served_as_applied`).
STEPS = 3


def next_requests(count: int, seed: int = 0) -> list[dict]:
    """Prompts ``text <image> text`` with images of several sizes (so several anyres grids)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    sizes = [(56, 28), (28, 56), (56, 56), (44, 30), (36, 50), (28, 28)]
    requests = []
    for number in range(count):
        width, height = sizes[number % len(sizes)]
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        before = " ".join(f"w{i}" for i in rng.integers(5, 64, 1 + number % 3))
        after = " ".join(f"w{i}" for i in rng.integers(5, 64, 2 + number % 4))
        requests.append({"prompt": f"{before} <image> {after}", "image": Image.fromarray(pixels)})
    return requests


def reference_prompts(model_dir, requests: list[dict], settings: dict | None, steps: int):
    """The same through transformers (one request at a time) and ``visprune.apply(...,
    positions="compact")``: ``answer``, ``prompt_tokens`` (the full prompt), ``visual`` tokens
    (newlines included), ``candidates`` (the image's tokens but its newlines; all visual tokens
    unpruned), ``kept`` (kept plus merged), ``merged`` and first-step ``logprobs``."""
    from transformers import AutoProcessor, LlavaNextForConditionalGeneration

    model = LlavaNextForConditionalGeneration.from_pretrained(model_dir).eval()
    processor = AutoProcessor.from_pretrained(model_dir)
    results = []
    with applied(model, settings, positions="compact") as handle:
        for r in requests:
            inputs = processor(text=r["prompt"], images=r["image"], return_tensors="pt")
            answer, length, logprobs = greedy(model, inputs, steps)
            visual = int((inputs["input_ids"] == model.config.image_token_index).sum())
            candidates, kept, merged = visual, visual, 0
            if handle is not None:
                candidates = sum(s.n for s in handle.selections)
                merged = sum(0 if s.merged is None else len(s.merged) for s in handle.selections)
                kept = sum(len(s.kept) for s in handle.selections) + merged
            results.append(
                {
                    "answer": answer,
                    "prompt_tokens": length,
                    "visual": visual,
                    "candidates": candidates,
                    "kept": kept,
                    "merged": merged,
                    "logprobs": logprobs,
                }
            )
    return results


def assert_next_served_as_applied(
    model_dir, settings: dict, tensor_parallel: bool, steps: int = STEPS
) -> list[dict]:
    """Twelve requests over several anyres grids served by the tiny LLaVA-NeXT at ``model_dir``
    answer as :func:`reference_prompts`, each prompt shorter by exactly the dropped candidates;
    returns the references."""
    requests = next_requests(12)
    served = serve_prompts(
        model_dir, requests, settings, steps, tensor_parallel=tensor_parallel, max_model_len=512
    )
    expected = reference_prompts(model_dir, requests, settings, steps)
    assert_equal(served, expected)
    for s, e in zip(served, expected, strict=True):
        assert e["kept"] < e["candidates"]
        assert s["prompt_tokens"] == e["prompt_tokens"] - (e["candidates"] - e["kept"])
    assert len({e["candidates"] for e in expected}) >= 3  # several anyres grids
    return expected
