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

from family_checkpoints import write_tiny_llava_next
from next_serving import STEPS, assert_next_served_as_applied
from serving import demo_requests as demo_prompts
from serving import prompt_ids, questions, serve_prompts
from transformers_reference import applied, assert_equal, greedy
from visprune.demo import model as demo_model
from visprune.demo import task
from visprune.demo.evaluate import Encoder
from visprune.demo.run import bundled_checkpoint

QUESTIONS = 12
#: On the demo checkpoint the scoring layer is one vLLM does not build (the plugin loads its
#: projections itself, sharded like the tower's on two ranks).
LLAVA_CASES = [{"method": "vispruner", "budget": 7}, {"method": "visionzip", "budget": 12}]


@pytest.fixture(scope="module")
def samples():
    return questions(QUESTIONS)


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
    results = []
    with applied(model, settings, positions="compact") as handle:
        for sample in samples:
            ids = torch.tensor([prompt_ids(sample, encoder, expanded=True)])
            pixels = processor.image_processor([sample.pil()], return_tensors="pt")
            inputs = {"input_ids": ids, "pixel_values": pixels["pixel_values"]}
            answer, length, logprobs = greedy(model, inputs, STEPS)
            kept, merged = kept_of(handle.selections)
            results.append(
                {
                    "answer": answer,
                    "prompt_tokens": length,
                    "kept": kept,
                    "merged": merged,
                    "logprobs": logprobs,
                }
            )
    return results


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
