"""vLLM's processors of InternVL, Gemma 3 and LLaVA-OneVision with the override, without an engine:
each image's placeholders are sized to the kept count before encoding (the rest of the prompt as
vLLM writes it unpruned), and Gemma 3's bidirectional span is the kept tokens."""

from __future__ import annotations

import itertools

import pytest

from family_serving import FAMILIES, make_requests
from serving import processed
from visprune.integrations.vllm.settings import parse_settings

SETTINGS = {"method": "cdpruner", "budget": 0.3}
#: The id of one placeholder token (one embedding row) per family.
PLACEHOLDER = {"internvl": 4, "gemma3": 4, "onevision": 4}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    written = {}
    for family, spec in FAMILIES.items():
        written[family] = tmp_path_factory.mktemp(family)
        spec.write(written[family])
    return written


def runs(ids: list[int], token: int) -> list[int]:
    """Lengths of the runs of ``token`` in ``ids``."""
    return [len(list(run)) for value, run in itertools.groupby(ids) if value == token]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_placeholders_are_sized_to_the_kept_count(checkpoints, family):
    requests = make_requests(family, 6)
    unpruned = processed(checkpoints[family], requests, {})
    pruned = processed(checkpoints[family], requests, {"visprune": SETTINGS})
    settings = parse_settings(SETTINGS)
    token = PLACEHOLDER[family]
    for full, kept in zip(unpruned, pruned, strict=True):
        full_ids, kept_ids = full["prompt_token_ids"], kept["prompt_token_ids"]
        assert [settings.num_keep(n) for n in runs(full_ids, token)] == runs(kept_ids, token)
        assert [t for t in full_ids if t != token] == [t for t in kept_ids if t != token]
        (span,) = kept["mm_placeholders"]["image"]
        assert span.get_num_embeds() == kept_ids.count(token)


def test_gemma3_pan_and_scan_crops_each_keep_their_budget(checkpoints):
    """transformers writes each pan-and-scan crop as one more image with its own budget: so
    does the plugin, one run of kept soft tokens per crop, in one image item. (vLLM's own
    pan-and-scan prompt differs from transformers' by a token here, pruned or not, so this is
    checked on the prompt alone.)"""
    requests = make_requests("gemma3", 3)
    for request in requests:
        request["options"] = {
            "do_pan_and_scan": True,
            "pan_and_scan_min_crop_size": 20,
            "pan_and_scan_min_ratio_to_activate": 1.2,
        }
    unpruned = processed(checkpoints["gemma3"], requests, {})
    pruned = processed(checkpoints["gemma3"], requests, {"visprune": SETTINGS})
    keep = parse_settings(SETTINGS).num_keep(16)
    crops = [len(runs(output["prompt_token_ids"], PLACEHOLDER["gemma3"])) for output in unpruned]
    assert crops == [1, 3, 3]  # square: the image alone; 2:1 and 1:2: it and two crops
    for count, output in zip(crops, pruned, strict=True):
        assert runs(output["prompt_token_ids"], PLACEHOLDER["gemma3"]) == [keep] * count
        (span,) = output["mm_placeholders"]["image"]
        assert span.get_num_embeds() == keep * count


def test_gemma3_bidirectional_span_is_the_kept_tokens(checkpoints):
    """vLLM makes attention bidirectional over each image's embedding range (on backends with
    prefix-LM support); with the override that range is exactly the kept soft tokens."""
    requests = make_requests("gemma3", 3)
    for output in processed(checkpoints["gemma3"], requests, {"visprune": SETTINGS}):
        ids = output["prompt_token_ids"]
        (span,) = output["mm_placeholders"]["image"]
        ((first, last),) = span.extract_embeds_range()
        kept = [i for i, t in enumerate(ids) if t == PLACEHOLDER["gemma3"]]
        assert (first, last) == (kept[0], kept[-1])
        assert last - first + 1 == parse_settings(SETTINGS).num_keep(16)
