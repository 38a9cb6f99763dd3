"""Serve requests with images or videos on a tiny Qwen-VL checkpoint through vLLM, and the same
requests through transformers with ``visprune.apply``, for the Qwen serving tests."""

from __future__ import annotations

import torch

from serving import serve_prompts
from transformers_reference import applied, greedy

#: Engine options of every Qwen test: prompts with one image or one video.
QWEN_ENGINE = {"max_model_len": 1024, "limit_mm_per_prompt": {"image": 1, "video": 1}}


def serve_qwen(model_dir, requests: list[dict], settings: dict | None, steps: int, **engine):
    """vLLM greedy continuations (:func:`serving.serve_prompts`): per request ``answer`` ids,
    ``prompt_tokens`` (as vLLM reports it) and the first step's top-5 ``logprobs``."""
    return serve_prompts(model_dir, requests, settings, steps, **QWEN_ENGINE, **engine)


def qwen_inputs(processor, request: dict) -> dict:
    """The processor's inputs for one request (a video with its frame rate, frames as given)."""
    if "video" in request:
        from transformers.video_utils import VideoMetadata

        metadata = {k: v for k, v in request["metadata"].items() if k != "do_sample_frames"}
        return processor(
            text=request["prompt"],
            videos=[request["video"]],
            video_metadata=[VideoMetadata(**metadata)],
            return_tensors="pt",
        )
    return processor(text=request["prompt"], images=request["image"], return_tensors="pt")


def reference_qwen(model_dir, requests: list[dict], settings: dict | None, steps: int):
    """The same through transformers, one request at a time, and ``visprune.apply`` at the
    family's default positions: ``answer``, ``prompt_tokens`` (the full prompt), ``visual`` and
    ``kept`` visual tokens and the first step's ``logprobs``."""
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    config = AutoConfig.from_pretrained(model_dir)
    model = AutoModelForImageTextToText.from_pretrained(model_dir).eval()
    processor = AutoProcessor.from_pretrained(model_dir)
    visual_ids = torch.tensor([config.image_token_id, config.video_token_id])
    results = []
    with applied(model, settings) as handle:
        for request in requests:
            inputs = qwen_inputs(processor, request)
            answer, length, logprobs = greedy(model, inputs, steps)
            visual = int(torch.isin(inputs["input_ids"], visual_ids).sum())
            kept = visual if handle is None else sum(len(s.kept) for s in handle.selections)
            results.append(
                {
                    "answer": answer,
                    "prompt_tokens": length,
                    "visual": visual,
                    "kept": kept,
                    "logprobs": logprobs,
                }
            )
    return results
