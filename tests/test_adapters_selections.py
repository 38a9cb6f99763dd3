"""The handle's ``selections``: per call, copied, in batch order, never stale across calls."""

from __future__ import annotations

import pytest
import torch

import visprune
from adapter_cases import (
    CASE_PARAMS,
    _no_grad,  # noqa: F401 (autouse)
    expected_items,
)
from pruned_reference import (
    always_kept,
    assert_same_selections,
    generate,
    lm_inputs,
)
from tiny_vlms import (
    GENERATE,
    IMG,
    INTERNVL_TILE_TOKENS,
    QWEN,
    VID,
    collate,
    inputs,
    ragged_samples,
    sample,
    tiny,
)
from visprune.adapters import Selection


@pytest.mark.parametrize(("family", "video"), CASE_PARAMS)
def test_selection_records(family, video):
    model = tiny(family)
    data = collate(ragged_samples(family, model, video))
    handle = visprune.apply(model, "divprune", 0.5)
    captured = lm_inputs(tiny(family), data)
    model.generate(**data, **GENERATE)
    fixed = always_kept(family, model, data, captured["embeds"], "candidates", "llm")
    items = expected_items(family, data, fixed)
    records = handle.selections
    assert len(records) == len(items)
    assert [r.sample for r in records] == sorted(r.sample for r in records)
    # grids: Qwen (h/2, w/2) of each image/video in order; frames of a video share it
    key = "video_grid_thw" if video else "image_grid_thw"
    visuals = iter(data[key].tolist()) if family in QWEN else None
    grid = None
    for record, item in zip(records, items, strict=True):
        assert isinstance(record, Selection)
        assert (record.sample, record.image, record.frame, record.kind) == (
            item["sample"],
            item["image"],
            item["frame"],
            item["kind"],
        )
        assert (record.frame is not None) == (record.kind == "video") == video
        assert record.kept.dtype == record.positions.dtype == torch.int64
        assert bool((record.kept.diff() > 0).all()) and int(record.kept.min()) >= 0
        assert int(record.kept.max()) < record.n == len(item["candidates"])
        assert len(record.kept) == handle.method.num_keep(record.n)
        token = VID if video else IMG
        assert bool((data["input_ids"][record.sample, record.positions] == token).all())
        assert torch.equal(record.positions, item["candidates"][record.kept])
        if family in QWEN:
            if record.frame in (None, 0):
                _, h, w = next(visuals)
                grid = (h // 2, w // 2)
            assert record.grid == grid
        elif family == "llava" or (family in ("llava_onevision", "llava_next_video") and video):
            assert record.grid == (2, 2)
        elif family == "internvl":  # a grid only for a one-tile image
            assert record.grid == ((4, 4) if record.n == INTERNVL_TILE_TOKENS else None)
        elif family == "gemma3":
            assert record.grid == (4, 4)
        else:
            assert record.grid is None


def test_selections_are_per_call_and_copied():
    model = tiny("llava")
    data = inputs("llava", model, batch=2)
    handle = visprune.apply(model, "divprune", 1)
    model(**data)
    first = handle.selections
    assert [len(r.kept) for r in first] == [1, 1]
    first.clear()
    assert len(handle.selections) == 2
    model(**inputs("llava", model, batch=1))
    last = handle.selections
    assert len(last) == 1
    handle.remove()
    assert_same_selections(handle.selections, last)  # still readable after remove()


def image_and_video_rows(family: str, model) -> tuple[list[dict], dict]:
    """Row 0 holds a video, row 1 an image."""
    rows = [
        sample(family, model, video=True, prefix=2, seed=1),
        sample(family, model, prefix=3, seed=2),
    ]
    return rows, collate(rows)


@pytest.mark.parametrize("family", ["qwen2_5_vl", "llava_onevision"])
def test_selections_in_batch_order_with_images_and_videos(family):
    """A video in row 0 and an image in row 1: records follow the batch order."""
    model = tiny(family)
    rows, data = image_and_video_rows(family, model)
    alone = []
    for one in rows:
        with visprune.apply(model, "divprune", 0.5):
            alone.append(generate(model, collate([one]))[0][0])
    handle = visprune.apply(model, "divprune", 0.5)
    tokens, _ = generate(model, data)
    records = handle.selections
    for row in range(2):
        assert torch.equal(tokens[row], alone[row])
    assert {(r.sample, r.kind) for r in records} == {(0, "video"), (1, "image")}
    assert [r.sample for r in records] == sorted(r.sample for r in records)


@pytest.mark.parametrize("family", ["qwen2_5_vl", "llava_onevision"])
def test_a_kind_absent_from_the_next_call_is_not_stale(family):
    """After a call with images and videos, a video-only call runs as with a fresh handle."""
    model = tiny(family)
    rows, data = image_and_video_rows(family, model)
    video_only = collate(rows[:1])
    with visprune.apply(model, "divprune", 0.5):
        want = generate(model, video_only)[0]
    with visprune.apply(model, "divprune", 0.5) as handle:
        generate(model, data)
        assert torch.equal(generate(model, video_only)[0], want)
        assert [r.kind for r in handle.selections] == ["video"] * 2
