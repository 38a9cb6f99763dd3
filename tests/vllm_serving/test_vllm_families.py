"""vLLM serving random-weight InternVL, Gemma 3 and LLaVA-OneVision through the plugin, against
transformers.

One engine per (family, settings), each with a dozen requests of several image sizes (InternVL
tile counts, OneVision anyres grids and videos of 2-4 frames) and prompt lengths: vLLM's greedy
tokens and first-step log-probabilities equal ``visprune.apply`` (the family's default positions)
+ ``generate`` in transformers, and each prompt is shorter by exactly the dropped tokens. Each
family gets a text-conditioned method, and a "vision"-stage one where it is served.
"""

from __future__ import annotations

import pytest

from family_serving import FAMILIES, make_requests, reference, serve, vllm_attends_images_both_ways
from transformers_reference import assert_equal

STEPS = 4

#: (family, settings): a text-conditioned method on each family, a "vision"-stage one where it
#: is served. Engines run in this process (seconds to start instead of a minute or two);
#: test_vllm_tensor_parallel.py serves each family in vLLM's own processes.
CASES = [
    ("internvl", {"method": "rediprune", "budget": 0.25}),
    ("internvl", {"method": "divprune", "budget": 11}),
    ("internvl", {"method": "cdpruner", "budget": 0.3}),
    ("gemma3", {"method": "cdpruner", "budget": 5}),
    ("gemma3", {"method": "rediprune", "budget": 0.5}),
    ("gemma3", {"method": "otprune", "budget": 7}),
    ("onevision", {"method": "trimtokenator", "budget": 0.3}),
    # ResPrune below the embedding width (64): beyond it the residuals vanish and its fill
    # order rests on float-level ties, which no two kernels break alike.
    ("onevision", {"method": "resprune", "budget": 0.15}),
    ("onevision", {"method": "uniform", "budget": 0.5}),
]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    written = {}

    def checkpoint(family: str):
        if family not in written:
            directory = tmp_path_factory.mktemp(family)
            FAMILIES[family].write(directory)
            written[family] = directory
        return written[family]

    return checkpoint


def requests_of(family: str) -> list[dict]:
    return make_requests(family, 12, videos=4 if FAMILIES[family].video_mark else 0)


@pytest.mark.parametrize(
    ("family", "settings"), CASES, ids=[f"{f}-{s['method']}" for f, s in CASES]
)
def test_pruned_family_equals_visprune_apply(checkpoints, family, settings):
    directory = checkpoints(family)
    requests = requests_of(family)
    served = serve(directory, family, requests, settings, STEPS)
    expected = reference(directory, family, requests, settings, STEPS)
    assert_equal(served, expected)
    for s, e in zip(served, expected, strict=True):
        assert e["dropped"] > 0
        assert s["prompt_tokens"] == e["prompt_tokens"] - e["dropped"]
    assert len({e["prompt_tokens"] - e["dropped"] for e in expected}) >= 3


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_without_the_override_vllm_is_untouched(checkpoints, family):
    """Without the override vLLM runs its own model code. (OneVision videos of one frame count
    only: vLLM 0.32's own OneVision fails on an encoder batch of videos with different frame
    counts, "Expected multimodal embeddings to be a sequence of 2D tensors"; the pruned one
    serves them, above.)"""
    directory = checkpoints(family)
    videos = 4 if FAMILIES[family].video_mark else 0
    requests = make_requests(family, 12, videos=videos, frames=(3,))
    served = serve(directory, family, requests, None, STEPS)
    expected = reference(directory, family, requests, None, STEPS)
    assert_equal(served, expected)
    assert [s["prompt_tokens"] for s in served] == [e["prompt_tokens"] for e in expected]


def test_the_cpu_backend_serves_gemma3_images_causally():
    """What the Gemma 3 reference above runs with here: vLLM's CPU attention backend has no
    bidirectional image spans (on a backend that has them, the reference uses them)."""
    from vllm.platforms import current_platform

    assert vllm_attends_images_both_ways() == (not current_platform.is_cpu())
