"""vLLM serving random-weight Qwen2.5-VL and Qwen3-VL through the plugin, against transformers.

Images of five sizes (several grids) and videos of 4 and 6 frames at 2 fps, in one engine per
(family, method settings): vLLM's greedy tokens and first-step log-probabilities equal
``visprune.apply(...)`` (the family's default positions, "original") + ``generate`` in
transformers, and each prompt is shorter by exactly the dropped tokens (the budget applies per
image and per video temporal patch group). Without the override vLLM is untouched.
"""

from __future__ import annotations

import pytest

from qwen_serving import reference_qwen, serve_qwen
from tiny_qwen import qwen_requests, write_tiny_qwen

STEPS = 4


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    directories = {}
    for family in ("qwen2_5_vl", "qwen3_vl"):
        directories[family] = tmp_path_factory.mktemp(family)
        write_tiny_qwen(family, directories[family])
    return directories


def requests_of(family: str, video: bool, videos: int = 4) -> list[dict]:
    """Five images, then ``videos`` videos: the fourth's temporal offsets (0, 2, 4) pass its
    4 x 4 grid, where transformers and vLLM start the text after it at different positions."""
    return qwen_requests(family, 5, video=False) + (
        qwen_requests(family, videos, video=True, seed=1) if video else []
    )


def assert_equal(served, expected):
    for number, (s, e) in enumerate(zip(served, expected, strict=True)):
        assert s["answer"] == e["answer"], number
        for token, logprob in s["logprobs"].items():
            assert abs(logprob - float(e["logprobs"][token])) < 1e-3, (number, token)


#: (family, settings, with video): text-free and text-conditioned methods, "vision" stage
#: included (on Qwen it scores the merger's output, as in transformers), counts and fractions.
#: Engines run in this process; test_vllm_tensor_parallel.py serves both families on two ranks
#: in vLLM's own processes.
CASES = [
    ("qwen2_5_vl", {"method": "divprune", "budget": 0.4}, True),
    ("qwen2_5_vl", {"method": "rediprune", "budget": 5}, True),
    ("qwen3_vl", {"method": "cdpruner", "budget": 0.3}, True),
]


@pytest.mark.parametrize(
    ("family", "settings", "video"), CASES, ids=[f"{f}-{s['method']}" for f, s, _ in CASES]
)
def test_pruned_qwen_equals_visprune_apply(checkpoints, family, settings, video):
    requests = requests_of(family, video)
    served = serve_qwen(checkpoints[family], requests, settings, STEPS)
    expected = reference_qwen(checkpoints[family], requests, settings, STEPS)
    assert_equal(served, expected)
    for s, e in zip(served, expected, strict=True):
        assert e["kept"] < e["visual"]
        assert s["prompt_tokens"] == e["prompt_tokens"] - (e["visual"] - e["kept"])
    assert len({e["visual"] for e in expected}) >= 4  # several grids and frame counts


def test_unpruned_qwen_is_untouched(checkpoints):
    """vLLM's own positions: equal to transformers' for videos within their grid."""
    requests = requests_of("qwen2_5_vl", video=True, videos=3)
    served = serve_qwen(checkpoints["qwen2_5_vl"], requests, None, STEPS)
    expected = reference_qwen(checkpoints["qwen2_5_vl"], requests, None, STEPS)
    assert_equal(served, expected)
    assert [s["prompt_tokens"] for s in served] == [e["prompt_tokens"] for e in expected]
