"""The vLLM plugin's family helpers that need no vLLM: placeholder runs cut to the kept count
(InternVL, Gemma 3) and selections made part by part (Gemma 3's crops, a video's frames)."""

from __future__ import annotations

import pytest
import torch

from visprune.integrations.vllm.placeholders import shrink_runs
from visprune.integrations.vllm.selection import select_in_parts, select_rows
from visprune.integrations.vllm.settings import parse_settings


def test_each_run_of_placeholders_shrinks_to_its_kept_count():
    start, end, image = 1, 2, 9
    ids = [5, start, *[image] * 8, end, 6, start, *[image] * 4, end]
    kept = shrink_runs(ids, {image}, lambda n: n // 4)
    assert kept == [5, start, image, image, end, 6, start, image, end]


def test_a_run_never_shrinks_to_nothing_or_grows():
    with pytest.raises(ValueError, match="between 1 and all"):
        shrink_runs([9, 9], {9}, lambda n: 0)
    with pytest.raises(ValueError, match="between 1 and all"):
        shrink_runs([9, 9], {9}, lambda n: 3)


def test_parts_are_selected_on_their_own_and_joined_per_item():
    settings = parse_settings({"method": "divprune", "budget": 0.5})
    generator = torch.Generator().manual_seed(0)
    parts = [torch.randn(8, 4, generator=generator) for _ in range(3)]
    kept = select_in_parts(settings, parts, parts, None, [2, 1])
    alone = select_rows(settings, parts, parts, None)
    assert len(kept) == 2
    assert torch.equal(kept[0], torch.cat(alone[:2])) and torch.equal(kept[1], alone[2])
    assert kept[0].shape == (8, 4)


def test_every_part_of_an_item_reads_the_item_text():
    settings = parse_settings({"method": "cdpruner", "budget": 3})
    generator = torch.Generator().manual_seed(1)
    parts = [torch.randn(8, 4, generator=generator) for _ in range(3)]
    texts = [torch.randn(2, 4, generator=generator), torch.randn(5, 4, generator=generator)]
    kept = select_in_parts(settings, parts, parts, texts, [1, 2])
    alone = select_rows(settings, parts, parts, [texts[0], texts[1], texts[1]])
    assert torch.equal(kept[1], torch.cat(alone[1:]))
    with pytest.raises(ValueError, match="3 parts for items of"):
        select_in_parts(settings, parts, parts, None, [1, 1])
