"""vLLM serving a "vision"-stage method (ReDiPrune: the projector input scored against the prompt)
on random-weight LLaVA-NeXT and LLaVA-OneVision through the plugin, against ``visprune.apply`` in
transformers.

Each crop's projector input is packed in the order of the image's tokens (base tile, then the
unpadded anyres tiles); the newline tokens have no such feature, so they are no candidates and
always stay, as in transformers. A OneVision video frame's projector input is pooled as vLLM pools
the projected frame (the budget per frame, the closing newline kept). vLLM's greedy tokens and
first-step log-probabilities equal ``visprune.apply`` (the family's default positions) +
``generate``, and each prompt is shorter by exactly the dropped tokens. Engines run in this
process (seconds to start).
"""

from __future__ import annotations

import pytest

from family_checkpoints import write_tiny_llava_next
from family_serving import FAMILIES, make_requests, reference, serve
from next_serving import STEPS, assert_next_served_as_applied
from transformers_reference import assert_equal

#: A fraction (each anyres grid keeps its own count) and a fixed count per image; on two ranks
#: the prompt's embeddings come from a sharded table, and a rank that selected other tokens
#: would change the answers.
CASES = [
    ({"method": "rediprune", "budget": 0.25}, False),
    ({"method": "rediprune", "budget": 7}, False),
    ({"method": "rediprune", "budget": 7}, True),
]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    directory = tmp_path_factory.mktemp("llava-next")
    write_tiny_llava_next(directory)
    return directory


@pytest.mark.parametrize(
    ("settings", "tensor_parallel"),
    CASES,
    ids=[f"{s['budget']}-tp{2 if tp else 1}" for s, tp in CASES],
)
def test_rediprune_on_llava_next_equals_visprune_apply(checkpoint, settings, tensor_parallel):
    assert_next_served_as_applied(checkpoint, settings, tensor_parallel)


@pytest.fixture(scope="module")
def onevision(tmp_path_factory):
    directory = tmp_path_factory.mktemp("onevision")
    FAMILIES["onevision"].write(directory)
    return directory


def test_rediprune_on_onevision_images_and_video_equals_visprune_apply(onevision):
    """Images (each packed with its newlines, which stay) and videos (each frame's pooled
    projector input, the budget per frame) in one engine."""
    settings = {"method": "rediprune", "budget": 0.3}
    requests = make_requests("onevision", 12, videos=4)
    served = serve(onevision, "onevision", requests, settings, STEPS)
    expected = reference(onevision, "onevision", requests, settings, STEPS)
    assert_equal(served, expected)
    for s, e in zip(served, expected, strict=True):
        assert e["dropped"] > 0
        assert s["prompt_tokens"] == e["prompt_tokens"] - e["dropped"]
    assert len({e["prompt_tokens"] - e["dropped"] for e in expected}) >= 3
