"""vLLM serving the methods that read the CLIP tower's CLS attention (VisPruner, VisionZip)
through the plugin, against ``visprune.apply`` in transformers.

The bundled demo checkpoint (LLaVA-1.5 layout; its projector reads the embeddings output, so the
scores come from the first encoder layer, which vLLM does not build): vLLM's greedy tokens and
first-step log-probabilities equal ``visprune.apply(..., positions="compact")`` + ``generate``,
and each prompt is shorter by exactly the dropped tokens (VisionZip's budget counts its merged
tokens). The same on a random-weight LLaVA-NeXT with images of several anyres grids: each crop's
patches scored by its own CLS row, one budget per image, the newline tokens always kept. Engines
run in this process (seconds to start).
"""

from __future__ import annotations

import pytest
import torch

import visprune
from serving import next_requests, prompt_ids, questions, serve_prompts, write_tiny_llava_next
from visprune.demo import model as demo_model
from visprune.demo import task
from visprune.demo.evaluate import Encoder
from visprune.demo.run import bundled_checkpoint

STEPS = 3
QUESTIONS = 12
#: On the demo checkpoint the scoring layer is one vLLM does not build (the plugin loads its
#: projections itself, sharded like the tower's on two ranks).
LLAVA_CASES = [{"method": "vispruner", "budget": 7}, {"method": "visionzip", "budget": 12}]


@pytest.fixture(scope="module")
def samples():
    return questions(QUESTIONS)


def demo_prompts(samples) -> list[dict]:
    encoder = Encoder()
    return [
        {
            "prompt_token_ids": prompt_ids(sample, encoder, expanded=False),
            "image": sample.pil(),
        }
        for sample in samples
    ]


def kept_of(selections) -> tuple[int, int]:
    """``(kept plus merged, merged)`` tokens of one image's selections."""
    merged = sum(0 if s.merged is None else len(s.merged) for s in selections)
    return sum(len(s.kept) for s in selections) + merged, merged


def reference(samples, settings: dict) -> list[dict]:
    """The same through transformers, one question at a time: ``answer``, ``prompt_tokens`` (the
    full prompt), ``kept`` visual tokens (kept plus merged) and first-step ``logprobs``."""
    model, processor = demo_model.load(bundled_checkpoint())
    model.generation_config.eos_token_id = None  # as vLLM's ignore_eos: run to STEPS tokens
    encoder = Encoder(processor.tokenizer)
    params = {k: v for k, v in settings.items() if k != "method"}
    results = []
    with visprune.apply(model, settings["method"], positions="compact", **params) as handle:
        for sample in samples:
            ids = torch.tensor([prompt_ids(sample, encoder, expanded=True)])
            pixels = processor.image_processor([sample.pil()], return_tensors="pt")
            with torch.no_grad():
                out = model.generate(
                    input_ids=ids,
                    pixel_values=pixels["pixel_values"],
                    max_new_tokens=STEPS,
                    do_sample=False,
                    output_scores=True,
                    return_dict_in_generate=True,
                )
            kept, merged = kept_of(handle.selections)
            results.append(
                {
                    "answer": out.sequences[0, ids.shape[1] :].tolist(),
                    "prompt_tokens": ids.shape[1],
                    "kept": kept,
                    "merged": merged,
                    "logprobs": torch.log_softmax(out.scores[0][0].double(), -1),
                }
            )
    return results


def next_reference(model_dir, requests: list[dict], settings: dict) -> list[dict]:
    """LLaVA-NeXT through transformers: as :func:`reference`, with ``candidates`` (the image's
    tokens but its newlines)."""
    from transformers import AutoProcessor, LlavaNextForConditionalGeneration

    model = LlavaNextForConditionalGeneration.from_pretrained(model_dir).eval()
    processor = AutoProcessor.from_pretrained(model_dir)
    params = {k: v for k, v in settings.items() if k != "method"}
    results = []
    with visprune.apply(model, settings["method"], positions="compact", **params) as handle:
        for r in requests:
            inputs = processor(text=r["prompt"], images=r["image"], return_tensors="pt")
            with torch.no_grad():
                out = model.generate(
                    **inputs,
                    max_new_tokens=STEPS,
                    do_sample=False,
                    output_scores=True,
                    return_dict_in_generate=True,
                )
            length = inputs["input_ids"].shape[1]
            kept, merged = kept_of(handle.selections)
            results.append(
                {
                    "answer": out.sequences[0, length:].tolist(),
                    "prompt_tokens": length,
                    "candidates": sum(s.n for s in handle.selections),
                    "kept": kept,
                    "merged": merged,
                    "logprobs": torch.log_softmax(out.scores[0][0].double(), -1),
                }
            )
    return results


def assert_next_served_as_applied(model_dir, settings: dict, tensor_parallel: bool) -> list[dict]:
    """Twelve requests over several anyres grids served by the tiny LLaVA-NeXT at ``model_dir``
    answer as :func:`next_reference`, each prompt shorter by exactly the dropped candidates;
    returns the references."""
    requests = next_requests(12)
    served = serve_prompts(
        model_dir, requests, settings, STEPS, tensor_parallel=tensor_parallel, max_model_len=512
    )
    expected = next_reference(model_dir, requests, settings)
    assert_equal(served, expected)
    for s, e in zip(served, expected, strict=True):
        assert e["kept"] < e["candidates"]
        assert s["prompt_tokens"] == e["prompt_tokens"] - (e["candidates"] - e["kept"])
    assert len({e["candidates"] for e in expected}) >= 3  # several anyres grids
    return expected


def assert_equal(served, expected):
    for number, (s, e) in enumerate(zip(served, expected, strict=True)):
        assert s["answer"] == e["answer"], number
        for token, logprob in s["logprobs"].items():
            assert abs(logprob - float(e["logprobs"][token])) < 1e-3, (number, token)


@pytest.mark.parametrize("settings", LLAVA_CASES, ids=[s["method"] for s in LLAVA_CASES])
def test_cls_methods_on_llava_equal_visprune_apply(samples, settings):
    served = serve_prompts(bundled_checkpoint(), demo_prompts(samples), settings, STEPS)
    expected = reference(samples, settings)
    assert_equal(served, expected)
    for s, e in zip(served, expected, strict=True):
        assert e["kept"] == settings["budget"]
        assert s["prompt_tokens"] == e["prompt_tokens"] - (task.NUM_CELLS - e["kept"])
    if settings["method"] == "visionzip":
        assert all(e["merged"] > 0 for e in expected)  # new tokens took part


@pytest.fixture(scope="module")
def next_checkpoint(tmp_path_factory):
    directory = tmp_path_factory.mktemp("llava-next")
    write_tiny_llava_next(directory)
    return directory


#: On two ranks each holds one of the tower's two heads, so the CLS attention and keys are
#: gathered from both; a rank that selected other tokens would change the answers.
NEXT_CASES = [
    ({"method": "vispruner", "budget": 0.25}, False),
    ({"method": "visionzip", "budget": 6}, False),
    ({"method": "visionzip", "budget": 6}, True),
]


@pytest.mark.parametrize(
    ("settings", "tensor_parallel"),
    NEXT_CASES,
    ids=[f"{s['method']}-tp{2 if tp else 1}" for s, tp in NEXT_CASES],
)
def test_cls_methods_on_llava_next_equal_visprune_apply(next_checkpoint, settings, tensor_parallel):
    expected = assert_next_served_as_applied(next_checkpoint, settings, tensor_parallel)
    if settings["method"] == "visionzip":
        assert all(e["merged"] > 0 for e in expected)
