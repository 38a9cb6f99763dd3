"""vLLM serving the methods that read the CLIP tower's CLS attention (VisPruner, VisionZip)
through the plugin, against ``visprune.apply`` in transformers.

The bundled demo checkpoint (LLaVA-1.5 layout; its projector reads the embeddings output, so the
scores come from the first encoder layer, which vLLM does not build): vLLM's greedy tokens and
first-step log-probabilities equal ``visprune.apply(..., positions="compact")`` + ``generate``,
and each prompt is shorter by exactly the dropped tokens (VisionZip's budget counts its merged
tokens). Engines run in this process (seconds to start).
"""

from __future__ import annotations

import gc

import pytest
import torch

import visprune
from family_serving import engine_in_this_process
from serving import ENGINE, prompt_ids, questions
from visprune.demo import model as demo_model
from visprune.demo import task
from visprune.demo.run import bundled_checkpoint
from visprune.demo.train import Encoder

STEPS = 3
QUESTIONS = 12
SETTINGS = [
    {"method": "vispruner", "budget": 7},
    {"method": "visionzip", "budget": 12},
]


@pytest.fixture(scope="module")
def samples():
    return questions(QUESTIONS)


def serve(samples, settings: dict) -> list[dict]:
    """vLLM's greedy continuation: ``answer`` ids, ``prompt_tokens``, first-step top-5
    ``logprobs``."""
    from vllm import LLM, SamplingParams

    encoder = Encoder()
    with engine_in_this_process() as executor:
        llm = LLM(
            model=str(bundled_checkpoint()),
            **ENGINE,
            **executor,
            hf_overrides={"visprune": settings},
        )
        try:
            outputs = llm.generate(
                [
                    {
                        "prompt_token_ids": prompt_ids(sample, encoder, expanded=False),
                        "multi_modal_data": {"image": sample.pil()},
                    }
                    for sample in samples
                ],
                SamplingParams(temperature=0.0, max_tokens=STEPS, logprobs=5, ignore_eos=True),
                use_tqdm=False,
            )
        finally:
            del llm
            gc.collect()
    return [
        {
            "answer": list(output.outputs[0].token_ids),
            "prompt_tokens": len(output.prompt_token_ids),
            "logprobs": {t: p.logprob for t, p in output.outputs[0].logprobs[0].items()},
        }
        for output in outputs
    ]


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
            (selection,) = handle.selections
            merged = 0 if selection.merged is None else len(selection.merged)
            results.append(
                {
                    "answer": out.sequences[0, ids.shape[1] :].tolist(),
                    "prompt_tokens": ids.shape[1],
                    "kept": len(selection.kept) + merged,
                    "merged": merged,
                    "logprobs": torch.log_softmax(out.scores[0][0].double(), -1),
                }
            )
    return results


@pytest.mark.parametrize("settings", SETTINGS, ids=[s["method"] for s in SETTINGS])
def test_cls_methods_on_llava_equal_visprune_apply(samples, settings):
    served = serve(samples, settings)
    expected = reference(samples, settings)
    for number, (s, e) in enumerate(zip(served, expected, strict=True)):
        assert s["answer"] == e["answer"], number
        for token, logprob in s["logprobs"].items():
            assert abs(logprob - float(e["logprobs"][token])) < 1e-3, (number, token)
        assert e["kept"] == settings["budget"]
        assert s["prompt_tokens"] == e["prompt_tokens"] - (task.NUM_CELLS - e["kept"])
    if settings["method"] == "visionzip":
        assert all(e["merged"] > 0 for e in expected)  # new tokens took part
