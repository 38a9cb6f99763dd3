"""Every served family on two tensor-parallel ranks, in vLLM's own worker processes.

Each rank holds half the attention heads, half the vision tower and half the embedding table, so
a text-conditioned method reads its prompt through a sharded table; the workers load visprune
through the ``vllm.general_plugins`` entry point, as a deployment does. One engine per family,
with a method each (every text-conditioned one on some family, random draws included) and the
requests and settings of the family's single-rank test: vLLM's greedy tokens and first-step
log-probabilities equal the transformers reference those tests hold the single-rank engine to
(so the two ranks answer as one), each prompt is shorter by exactly the dropped tokens, and
every rank returned the same kept rows, bit for bit (:func:`serving.assert_ranks_agree`).
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

import family_serving
import serving
from family_checkpoints import write_tiny_llava_next
from next_serving import next_requests, reference_prompts
from qwen_serving import reference_qwen, serve_qwen
from tiny_qwen import qwen_requests, write_tiny_qwen
from transformers_reference import assert_equal

STEPS = 4
QUESTIONS = 40  # demo questions on the bundled LLaVA-1.5 checkpoint


@dataclass(frozen=True)
class Case:
    family: str
    settings: dict
    #: The engine core in its own process too, as served: requests, their prompt text among
    #: them, cross from the front end to it and on to the workers.
    spawned: bool = False


CASES = [
    Case("llava", {"method": "random", "budget": serving.BUDGET}),
    Case("llava_next", {"method": "trimtokenator", "budget": 9}),
    Case("qwen2_5_vl", {"method": "rediprune", "budget": 5}),
    Case("qwen3_vl", {"method": "cdpruner", "budget": 0.3}),
    Case("internvl", {"method": "divprune", "budget": 11}),
    Case("gemma3", {"method": "rediprune", "budget": 0.5}),
    # ResPrune below the embedding width (see test_vllm_families.py).
    Case("onevision", {"method": "resprune", "budget": 0.15}, spawned=True),
]


def llava(case: Case, directory, engine: dict):
    """The bundled demo checkpoint: one-word answers, no reference log-probabilities."""
    samples = serving.questions(QUESTIONS)
    served = serving.serve(samples, case.settings["method"], **engine)
    expected = serving.reference(samples, case.settings["method"])
    assert [s["answer"] for s in served] == [e["answer"] for e in expected]
    dropped = [serving.task.NUM_CELLS - e["kept"] for e in expected]
    return served, expected, dropped


def llava_next(case: Case, directory, engine: dict):
    write_tiny_llava_next(directory)
    requests = next_requests(12)
    served = serving.serve_prompts(
        directory, requests, case.settings, STEPS, max_model_len=512, **engine
    )
    expected = reference_prompts(directory, requests, case.settings, STEPS)
    assert_equal(served, expected)
    return served, expected, [e["visual"] - e["kept"] for e in expected]


def qwen(case: Case, directory, engine: dict):
    """Five images and four videos of 4 and 6 frames (test_vllm_qwen.py's requests)."""
    write_tiny_qwen(case.family, directory)
    requests = qwen_requests(case.family, 5, video=False) + qwen_requests(
        case.family, 4, video=True, seed=1
    )
    served = serve_qwen(directory, requests, case.settings, STEPS, **engine)
    expected = reference_qwen(directory, requests, case.settings, STEPS)
    assert_equal(served, expected)
    return served, expected, [e["visual"] - e["kept"] for e in expected]


def family(case: Case, directory, engine: dict):
    """A dozen images, and four videos where the family has them (test_vllm_families.py's)."""
    spec = family_serving.FAMILIES[case.family]
    spec.write(directory)
    requests = family_serving.make_requests(case.family, 12, videos=4 if spec.video_mark else 0)
    served = family_serving.serve(directory, case.family, requests, case.settings, STEPS, **engine)
    expected = family_serving.reference(directory, case.family, requests, case.settings, STEPS)
    assert_equal(served, expected)
    return served, expected, [e["dropped"] for e in expected]


RUNS = {
    "llava": llava,
    "llava_next": llava_next,
    "qwen2_5_vl": qwen,
    "qwen3_vl": qwen,
    "internvl": family,
    "gemma3": family,
    "onevision": family,
}


@pytest.mark.parametrize("case", CASES, ids=[f"{c.family}-{c.settings['method']}" for c in CASES])
def test_two_ranks_answer_as_one(tmp_path, case):
    engine = {"tensor_parallel": True, "in_process": not case.spawned}
    served, expected, dropped = RUNS[case.family](case, tmp_path, engine)
    assert all(d > 0 for d in dropped)
    assert [s["prompt_tokens"] for s in served] == [
        e["prompt_tokens"] - d for e, d in zip(expected, dropped, strict=True)
    ]
