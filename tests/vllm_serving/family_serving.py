"""Serve a tiny checkpoint of InternVL, Gemma 3 or LLaVA-OneVision with vLLM, and run the same
requests through transformers and ``visprune.apply``.

Helpers of ``test_vllm_families.py``; the functions that create an ``LLM`` are called from tests
only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from family_checkpoints import write_gemma3, write_internvl, write_onevision
from serving import serve_prompts
from transformers_reference import applied, greedy


@dataclass(frozen=True)
class Family:
    write: object
    #: What a prompt writes for one image / one video.
    image_mark: str
    video_mark: str | None
    #: Image sizes (width, height) of the requests: several tile counts or anyres grids.
    sizes: tuple
    limits: dict


FAMILIES = {
    "internvl": Family(
        write_internvl,
        "<IMG_CONTEXT>",
        "<video>",
        # 1 tile; 2 tiles + thumbnail; 3 + thumbnail; 4 + thumbnail
        ((30, 30), (64, 32), (32, 96), (64, 64), (40, 70), (90, 35)),
        {"image": 1, "video": 1},
    ),
    "gemma3": Family(
        write_gemma3,
        "<start_of_image>",
        None,
        ((56, 56), (80, 40), (30, 60)),
        {"image": 1},
    ),
    "onevision": Family(
        write_onevision,
        "<image>",
        "<video>",
        ((84, 84), (168, 84), (84, 168), (168, 168), (120, 90), (60, 150)),
        {"image": 1, "video": 1},
    ),
}


def make_requests(
    family: str, count: int, videos: int = 0, frames: tuple = (2, 3, 4), seed: int = 0
) -> list[dict]:
    """``count`` prompts ``text <image> text`` of several image sizes and prompt lengths, then
    ``videos`` prompts ``text <video> text`` with ``frames`` frames in turn (families with
    video)."""
    from PIL import Image

    spec = FAMILIES[family]
    rng = np.random.default_rng(seed)
    requests = []
    for number in range(count + videos):
        before = " ".join(f"w{i}" for i in rng.integers(5, 64, 1 + number % 3))
        after = " ".join(f"w{i}" for i in rng.integers(5, 64, 2 + number % 4))
        if number < count:
            width, height = spec.sizes[number % len(spec.sizes)]
            pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
            media = {"image": Image.fromarray(pixels)}
            mark = spec.image_mark
        else:
            shape = (frames[number % len(frames)], 84, 84, 3)
            media = {"video": rng.integers(0, 256, shape, dtype=np.uint8)}
            mark = spec.video_mark
        requests.append({"prompt": f"{before} {mark} {after}", **media})
    return requests


def serve(
    directory, family: str, requests: list[dict], settings: dict | None, steps: int, **engine
):
    """vLLM's greedy continuation of each request (:func:`serving.serve_prompts`, whose options
    ``engine`` takes): ``answer`` ids, ``prompt_tokens`` and the first step's top-5
    ``logprobs`` ({id: logprob})."""
    limits = FAMILIES[family].limits
    return serve_prompts(
        directory,
        requests,
        settings,
        steps,
        max_model_len=512,
        limit_mm_per_prompt=limits,
        **engine,
    )


def vllm_attends_images_both_ways() -> bool:
    """Whether vLLM's attention backend here applies a prefix-LM model's bidirectional image
    spans (Gemma 3's); vLLM's CPU backend does not, and then serves images causally."""
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return True
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

    return CPUAttentionBackend.supports_mm_prefix()


def reference(directory, family: str, requests: list[dict], settings: dict | None, steps: int):
    """The same requests through transformers (one at a time) with ``visprune.apply`` at the
    family's default positions: ``answer``, ``prompt_tokens`` (the full prompt), ``dropped``
    visual tokens and first-step ``logprobs`` (all of the vocabulary).

    Gemma 3 runs with its bidirectional image blocks (``token_type_ids``) exactly where vLLM's
    attention backend applies them (:func:`vllm_attends_images_both_ways`), causally elsewhere.
    """
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(directory).eval()
    processor = AutoProcessor.from_pretrained(directory)
    results = []
    with applied(model, settings) as handle:
        for r in requests:
            media = {}
            if "image" in r:
                media["images"] = r["image"]
            if "video" in r:
                media["videos"] = r["video"]
            inputs = processor(
                text=r["prompt"], return_tensors="pt", **media, **r.get("options", {})
            )
            if family == "gemma3" and not vllm_attends_images_both_ways():
                inputs.pop("token_type_ids")
            answer, length, logprobs = greedy(model, inputs, steps)
            dropped = 0
            if handle is not None:
                dropped = sum(s.n - len(s.kept) for s in handle.selections)
            results.append(
                {
                    "answer": answer,
                    "prompt_tokens": length,
                    "dropped": dropped,
                    "logprobs": logprobs,
                }
            )
    return results
