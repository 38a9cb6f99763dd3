"""A pruned ``generate`` waits for the device a fixed number of times per batch, not per image.

On a GPU each host sync stalls the host until the stream drains. The counts come from torch's
dispatch modes (:mod:`visprune.dispatch`) on the CPU, where they are exact; what visprune adds
to a call is the pruned count minus the unpruned count of the same call, which leaves out the
reads transformers makes itself.

Measured here (tiny models, ``generate`` with one new token): visprune adds 5 host syncs to a
LLaVA, LLaVA-NeXT or Gemma 3 prefill with DivPrune (7 for Qwen2.5-VL, 6 for InternVL), 8 with a
text-conditioned method (TrimTokenator, CDPruner), whether the batch holds 1, 2 or 4 images:
one read each to find the placeholders, count them per row, shorten the sequence and copy the
selections to the host, and the method's own validation (1 to 4 reads per call).
"""

from __future__ import annotations

import pytest
import torch

import visprune
from tiny_vlms import GENERATE, inputs, tiny
from visprune.dispatch import DispatchCounts

CASES = [
    ("llava", "divprune", 5),
    ("llava", "trimtokenator", 8),
    ("llava_next", "divprune", 5),
    ("qwen2_5_vl", "divprune", 7),
    ("gemma3", "divprune", 5),
    ("internvl", "divprune", 6),
    ("llava_onevision", "cdpruner", 8),
]


def added_syncs(model, method: str, batch: int, new_tokens: int = 1, **params) -> int:
    """Host syncs that ``visprune.apply`` adds to one ``generate`` call."""
    given = inputs(model.config.model_type, model, batch=batch)
    settings = dict(GENERATE, max_new_tokens=new_tokens)
    with torch.no_grad():
        with DispatchCounts() as unpruned:
            model.generate(**given, **settings)
        with visprune.apply(model, method, budget=2, **params), DispatchCounts() as pruned:
            model.generate(**given, **settings)
    return pruned.syncs - unpruned.syncs


@pytest.mark.parametrize(("family", "method", "expected"), CASES, ids=lambda case: str(case))
def test_prefill_syncs_do_not_grow_with_the_images_in_the_batch(family, method, expected):
    model = tiny(family)
    assert [added_syncs(model, method, batch) for batch in (1, 2, 4)] == [expected] * 3


def test_pruning_inside_the_language_model_syncs_once_per_batch():
    """FastV selects every image of the batch in one call at its layer: 13 added syncs (its
    scores, the shortened hidden states and positions, and the method's own checks)."""
    model = tiny("llava")
    counts = [added_syncs(model, "fastv", batch, layer=1) for batch in (1, 2, 4)]
    assert counts == [13] * 3


@pytest.mark.parametrize("family", ["llava", "llava_next", "internvl"])
def test_decode_steps_add_no_sync(family):
    """After the prefill, a decode step of the shortened cache reads nothing more than the
    unpruned one (Qwen-VL and Gemma 3 rebuild their attention mask for the shortened cache,
    which transformers checks once per step)."""
    model = tiny(family)
    assert added_syncs(model, "divprune", 2, new_tokens=4) == added_syncs(model, "divprune", 2)


def test_a_copy_to_the_host_counts_as_a_sync():
    """``.cpu()`` is free for a CPU tensor but waits for the stream on a GPU: counted."""
    with DispatchCounts() as counts:
        torch.arange(3).cpu()
    assert dict(counts.sync_ops) == {"Tensor.cpu": 1}
