"""InternVL: the budget applies per image across all its tiles; video frames are one-tile images.

The encoder returns every tile of the batch flattened, so the adapter groups tiles by the runs of
image tokens in ``input_ids`` (each image sits between ``<img>`` and ``</img>``).
"""

from __future__ import annotations

import pytest
import torch

import visprune
from pruned_reference import lm_inputs, prompt_text, visual_runs
from tiny_vlms import (
    GENERATE,
    IMG,
    INTERNVL_TILE_TOKENS,
    VE,
    VS,
    collate,
    ragged_samples,
    sample,
    tiny,
)

FAMILY = "internvl"


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


@pytest.mark.parametrize("budget", [10, 0.5])
def test_one_selection_per_image_across_all_its_tiles(budget):
    """Images of 3, 1 and 5 tiles: three selections, each over its whole ``<img>`` span."""
    model = tiny(FAMILY)
    data = collate(ragged_samples(FAMILY, model))
    captured = lm_inputs(model, data)
    handle = visprune.apply(model, "divprune", budget)
    model.generate(**data, **GENERATE)
    records = handle.selections
    assert [(r.sample, r.image, r.frame, r.kind) for r in records] == [
        (0, 0, None, "image"),
        (1, 0, None, "image"),
        (1, 1, None, "image"),
    ]
    tiles = [3, 1, 5]
    for record, count in zip(records, tiles, strict=True):
        row = data["input_ids"][record.sample]
        run = visual_runs(row)[record.image][1]
        assert row[run[0] - 1] == VS and row[run[-1] + 1] == VE
        assert record.n == count * INTERNVL_TILE_TOKENS
        assert torch.equal(record.candidates, run)
        assert len(record.kept) == handle.method.num_keep(record.n)  # k per image, not per tile
        want = visprune.select("divprune", captured["embeds"][record.sample, run], budget)
        assert torch.equal(record.kept, want)
    # 40 of the 5-tile image's 80 tokens cannot fit in two tiles: the pick spans its tiles.
    if budget == 0.5:
        assert len(set((records[2].kept // INTERNVL_TILE_TOKENS).tolist())) >= 3


def video_prompt(model, frames: int, prefix: int, seed: int) -> dict:
    """A video as InternVL's processor writes it: ``FrameN: <img> tokens </img>`` per frame,
    each frame one tile with the image token."""
    one = sample(FAMILY, model, images=frames, size=1, prefix=prefix, seed=seed)
    ids = one["input_ids"].tolist()
    out, frame = [], 0
    for position, token in enumerate(ids):
        if token == VS:
            out += [40 + frame, 41]  # "Frame{n}" ":" text tokens before each frame
            frame += 1
        out.append(token)
        assert position == 0 or token != IMG or ids[position - 1] in (VS, IMG)
    return {**one, "input_ids": torch.tensor(out)}


def test_video_frames_are_images_with_their_own_budget():
    model = tiny(FAMILY)
    samples = [video_prompt(model, 3, 2, seed=1), video_prompt(model, 2, 5, seed=2)]
    data = collate(samples)
    captured = lm_inputs(model, data)
    handle = visprune.apply(model, "trimtokenator", 0.25)
    tokens = model.generate(**data, **GENERATE)[:, data["input_ids"].shape[1] :]
    records = handle.selections
    assert [(r.sample, r.image, r.kind, r.n) for r in records] == [
        (0, 0, "image", 16),
        (0, 1, "image", 16),
        (0, 2, "image", 16),
        (1, 0, "image", 16),
        (1, 1, "image", 16),
    ]
    for record in records:
        assert record.grid == (4, 4) and len(record.kept) == 4
        run = visual_runs(data["input_ids"][record.sample])[record.image][1]
        text = prompt_text(captured["embeds"], data, record.sample)
        frame = captured["embeds"][record.sample, run]
        want = visprune.select("trimtokenator", frame, 4, text=text)
        assert torch.equal(record.kept, want)
    for row, one in enumerate(samples):
        alone = model.generate(**collate([one]), **GENERATE)[:, len(one["input_ids"]) :]
        assert torch.equal(tokens[row], alone[0])


@pytest.mark.parametrize(
    "options",
    [{"num_beams": 2}, {"do_sample": True, "num_return_sequences": 2}],
    ids=["beams", "samples"],
)
def test_expanded_rows_join_the_tiles_of_their_source_row(options):
    """Generation expands the rows after encoding the tiles once; each copy prunes as its row."""
    model = tiny(FAMILY)
    data = collate(ragged_samples(FAMILY, model))
    handle = visprune.apply(model, "divprune", 0.5)
    model(**data)
    source = handle.selections
    torch.manual_seed(0)
    model.generate(**data, **{**GENERATE, **options})
    expanded = handle.selections
    assert len(expanded) == 2 * len(source)
    for row in range(4):
        mine = [record for record in expanded if record.sample == row]
        want = [record for record in source if record.sample == row // 2]
        assert [(r.image, r.n) for r in mine] == [(r.image, r.n) for r in want]
        for a, b in zip(mine, want, strict=True):
            assert torch.equal(a.kept, b.kept)


def test_a_run_that_splits_a_tile_raises():
    """Placeholder total right, but one image's run cuts a tile in two: an error, not a guess."""
    model = tiny(FAMILY)
    data = collate([sample(FAMILY, model, size=3, prefix=2, seed=1)])
    ids = data["input_ids"]
    run = visual_runs(ids[0])[0][1]
    ids[0, run[20]] = 5  # a text token inside the image ...
    ids[0, run[-1] + 1] = IMG  # ... and one placeholder more where </img> was
    model(**data)  # the unpatched model scatters the features regardless
    visprune.apply(model, "divprune", 0.5)
    with pytest.raises(ValueError, match="whole tiles"):
        model(**data)


def test_rediprune_reads_each_images_pixel_shuffled_tiles():
    """ "vision" stage: the projector input (after pixel shuffle) of the image's tiles in order."""
    model = tiny(FAMILY)
    data = collate(ragged_samples(FAMILY, model))
    captured = lm_inputs(model, data)
    shuffled = []
    hook = model.model.multi_modal_projector.register_forward_pre_hook(
        lambda module, inputs: shuffled.append(inputs[0])
    )
    model(**data)
    hook.remove()
    tiles = shuffled[0]
    assert tiles.shape == (9, INTERNVL_TILE_TOKENS, 4 * model.config.vision_config.hidden_size)
    handle = visprune.apply(model, "rediprune", 0.5)
    model(**data)
    first = 0
    for record, count in zip(handle.selections, [3, 1, 5], strict=True):
        features = tiles[first : first + count].flatten(0, 1)
        first += count
        text = prompt_text(captured["embeds"], data, record.sample)
        assert torch.equal(record.kept, visprune.select("rediprune", features, 0.5, text=text))
