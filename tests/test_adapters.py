"""``visprune.apply`` on tiny in-process VLMs: generation equals a hand-built pruned reference.

The reference (:mod:`pruned_reference`) never goes through visprune: it takes the unpatched
model's language-model inputs, drops the visual positions that the handle's ``selections`` say
were removed, and runs the plain language model of a second model instance with the same weights
(``twin``) on the shortened sequence, decoding greedily step by step.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import LlamaConfig, LlamaForCausalLM

import visprune
from pruned_reference import (
    STEPS,
    always_kept,
    assert_logits_close,
    assert_same_selections,
    assert_unpatched,
    generate,
    greedy,
    hooks_of,
    keep_mask,
    lm_inputs,
    newline_mask,
    prompt_text,
    reference_decode,
    reference_for,
    reference_prefill,
    visual_runs,
)
from tiny_vlms import (
    CASES,
    GEMMA3_WINDOW,
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
    visual_mask,
)
from visprune.adapters import Selection


def case_id(case: tuple[str, bool]) -> str:
    family, video = case
    return f"{family}-video" if video else family


CASE_PARAMS = [pytest.param(*case, id=case_id(case)) for case in CASES]
QWEN_CASES = [pytest.param(*case, id=case_id(case)) for case in CASES if case[0] in QWEN]


def method_params(names: list[str], random_seed: int) -> list:
    """``(method, params)`` cases, each with the method's name as its id; ``random`` draws from
    ``random_seed`` so that its picks are reproducible."""
    return [
        pytest.param(name, {"seed": random_seed} if name == "random" else {}, id=name)
        for name in names
    ]


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


# --------------------------------------------------------------------------------- 1. keepall
@pytest.mark.parametrize("padded", [False, True], ids=["same-length", "left-padded"])
@pytest.mark.parametrize(("family", "video"), CASE_PARAMS)
def test_keepall_is_bit_identical(family, video, padded):
    model = tiny(family)
    if padded:
        data = collate(ragged_samples(family, model, video))
    else:
        data = inputs(family, model, video=video, batch=2)
    logits = model(**data).logits
    cached = model.generate(**data, **GENERATE)
    uncached = model.generate(**data, **GENERATE, use_cache=False)
    with visprune.apply(model, "keepall") as handle:
        assert torch.equal(model(**data).logits, logits)
        assert torch.equal(model.generate(**data, **GENERATE), cached)
        assert torch.equal(model.generate(**data, **GENERATE, use_cache=False), uncached)
        assert handle.selections
        for record in handle.selections:
            assert torch.equal(record.kept, torch.arange(record.n))
    assert_unpatched(model)


# ---------------------------------------------------------------- 2. generate == the reference
METHODS = method_params(
    ["divprune", "random", "trimtokenator", "resprune", "rediprune", "cdpruner"], random_seed=3
)


@pytest.mark.parametrize(("method", "params"), METHODS)
@pytest.mark.parametrize(("family", "video"), CASE_PARAMS)
def test_generate_matches_hand_built_reference(family, video, method, params):
    model, twin = tiny(family), tiny(family)
    data = inputs(family, model, video=video, batch=2)
    handle = visprune.apply(model, method, 0.5, **params)
    assert handle.positions == ("original" if family in QWEN else "compact")
    logits = model(**data).logits
    forward_selections = handle.selections
    tokens, step_logits = generate(model, data)
    assert_same_selections(handle.selections, forward_selections)
    embeds, positions, _ = reference_for(family, twin, data, handle)
    assert logits.shape[1] == embeds.shape[1] < data["input_ids"].shape[1]
    torch.testing.assert_close(
        logits, reference_prefill(twin, embeds, positions), atol=2e-5, rtol=1e-4
    )
    want_tokens, want_logits = reference_decode(twin, embeds, positions)
    assert torch.equal(tokens, want_tokens)
    assert_logits_close(step_logits, want_logits)


@pytest.mark.parametrize(("method", "params"), METHODS[:2])
@pytest.mark.parametrize(("family", "video"), CASE_PARAMS)
def test_generate_without_cache_matches_reference(family, video, method, params):
    """``use_cache=False`` re-runs the whole (re-pruned) prefix each step, like the reference."""
    model, twin = tiny(family), tiny(family)
    data = inputs(family, model, video=video, batch=2)
    handle = visprune.apply(model, method, 0.5, **params)
    tokens, step_logits = generate(model, data, use_cache=False)
    embeds, positions, _ = reference_for(family, twin, data, handle)
    want_tokens, want_logits = reference_decode(twin, embeds, positions, use_cache=False)
    assert torch.equal(tokens, want_tokens)
    assert_logits_close(step_logits, want_logits)
    assert torch.equal(
        model.generate(**data, **GENERATE), model.generate(**data, **GENERATE, use_cache=False)
    )


# ------------------------------------------- the method gets the right tokens, text and budget
def expected_items(family: str, data: dict, fixed: Tensor) -> list[dict]:
    """Every image / video frame of ``data`` in batch and prompt order, with its candidates."""
    videos = iter(
        data["video_grid_thw"][:, 0].tolist()
        if "video_grid_thw" in data
        else [data["pixel_values_videos"].shape[1]] * len(data["pixel_values_videos"])
        if "pixel_values_videos" in data
        else []
    )
    items = []
    for sample_index, row in enumerate(data["input_ids"]):
        counter = {IMG: 0, VID: 0}
        runs = iter(visual_runs(row))
        for token, run in runs:
            kind = "video" if token == VID else "image"
            frames = next(videos) if kind == "video" else 1
            if kind == "video" and family in (
                "qwen3_vl",
                "qwen3_vl_moe",
            ):  # one run per frame, between timestamps
                run = torch.cat([run, *(next(runs)[1] for _ in range(frames - 1))])
            candidates = run[~fixed[sample_index, run]]
            per_frame = len(candidates) // frames
            for frame in range(frames):
                items.append(
                    {
                        "sample": sample_index,
                        "image": counter[token],
                        "frame": frame if kind == "video" else None,
                        "kind": kind,
                        "candidates": candidates[frame * per_frame : (frame + 1) * per_frame],
                    }
                )
            counter[token] += 1
    return items


@pytest.mark.parametrize("method", ["divprune", "trimtokenator", "rediprune", "cdpruner"])
@pytest.mark.parametrize(("family", "video"), CASE_PARAMS)
def test_method_gets_each_items_tokens_and_prompt(family, video, method):
    """``kept`` is what ``visprune.select`` picks from that image's (frame's) own tokens.

    The tokens are the LLM input embeddings at the item's positions (for "vision"-stage methods on
    LLaVA: the projector input; on Gemma 3: the projector input average-pooled to the soft-token
    grid), the text is the row's unpadded prompt after its last visual
    token, and the budget resolves per item. Run on a left-padded batch with uneven rows.
    """
    model = tiny(family)
    data = collate(ragged_samples(family, model, video))
    projector_inputs: list[Tensor] = []
    projector = getattr(model.model, "multi_modal_projector", None)
    hook = None
    if projector is not None:
        hook = projector.register_forward_pre_hook(lambda m, a: projector_inputs.append(a[0]))
    captured = lm_inputs(model, data)
    if hook is not None:
        hook.remove()
    handle = visprune.apply(model, method, 0.5)
    model(**data)
    fixed = always_kept(family, model, data, captured["embeds"], "candidates", handle.method.stage)
    items = expected_items(family, data, fixed)
    assert [(r.sample, r.image, r.frame, r.kind) for r in handle.selections] == [
        (i["sample"], i["image"], i["frame"], i["kind"]) for i in items
    ]
    tile = 0  # InternVL: the projector input has one row per tile, in prompt order
    for number, (record, item) in enumerate(zip(handle.selections, items, strict=True)):
        candidates = item["candidates"]
        tokens = captured["embeds"][record.sample, candidates]
        if method == "rediprune" and family == "llava":
            tokens = projector_inputs[0][number]  # one image per item; CLS already dropped
        elif method == "rediprune" and family == "internvl":
            tiles = len(candidates) // INTERNVL_TILE_TOKENS
            tokens = projector_inputs[0][tile : tile + tiles].flatten(0, 1)  # all its tiles
            tile += tiles
        elif method == "rediprune" and family == "gemma3":
            patches = projector_inputs[0][number]  # (8 * 8, c) in raster order
            side = math.isqrt(patches.shape[0])
            grid = patches.T.reshape(1, -1, side, side)
            tokens = F.avg_pool2d(grid, 2).flatten(2)[0].T  # the 4 x 4 grid of soft tokens
        elif method == "rediprune" and family in (
            "llava_next",
            "llava_next_video",
            "llava_onevision",
        ):
            tokens = None  # re-packed tile features: covered by the reference tests
        text = prompt_text(captured["embeds"], data, record.sample)
        assert record.n == len(candidates)
        assert len(record.kept) == handle.method.num_keep(record.n)
        assert torch.equal(record.positions, candidates[record.kept])
        if tokens is not None:
            want = visprune.select(method, tokens, 0.5, text=text)
            assert torch.equal(record.kept, want), (number, record.kept, want)


# ------------------------------------------------------------------------ 4. batch == single
BATCH_METHODS = method_params(
    ["divprune", "random", "trimtokenator", "rediprune", "cdpruner"], random_seed=1
)


@pytest.mark.parametrize(("method", "params"), BATCH_METHODS)
@pytest.mark.parametrize(("family", "video"), CASE_PARAMS)
def test_left_padded_batch_equals_each_row_alone(family, video, method, params):
    """Rows of different lengths that keep different counts are re-padded on the left."""
    model = tiny(family)
    samples = ragged_samples(family, model, video)
    data = collate(samples)
    handle = visprune.apply(model, method, 0.5, **params)
    tokens, step_logits = generate(model, data)
    batch_selections = handle.selections
    dropped = [0, 0]
    for record in batch_selections:
        dropped[record.sample] += record.n - len(record.kept)
    lengths = [len(s["input_ids"]) - d for s, d in zip(samples, dropped, strict=True)]
    assert lengths[0] != lengths[1], "the rows should keep different counts"
    for row, one in enumerate(samples):
        alone_tokens, alone_logits = generate(model, collate([one]))
        assert torch.equal(tokens[row], alone_tokens[0]), row
        assert_logits_close([x[row] for x in step_logits], [x[0] for x in alone_logits])
        alone = [r for r in batch_selections if r.sample == row]
        offset = data["input_ids"].shape[1] - len(one["input_ids"])
        for got, want in zip(alone, handle.selections, strict=True):
            assert torch.equal(got.kept, want.kept)
            assert torch.equal(got.positions, want.positions + offset)


@pytest.mark.parametrize("family", ["llava", "qwen2_5_vl"])
def test_batch_with_a_row_without_images(family):
    """A row with no image runs unpruned next to a pruned row."""
    model = tiny(family)
    samples = [
        sample(family, model, images=2, prefix=2, seed=1),
        sample(family, model, images=0, prefix=4, suffix=6, seed=2),
    ]
    handle = visprune.apply(model, "divprune", 0.5)
    tokens, _ = generate(model, collate(samples))
    assert {r.sample for r in handle.selections} == {0}
    for row, one in enumerate(samples):
        assert torch.equal(tokens[row], generate(model, collate([one]))[0][0])
    handle.remove()
    assert torch.equal(tokens[1], generate(model, collate(samples[1:]))[0][0])


@pytest.mark.parametrize("family", ["llava", "llava_onevision", "qwen2_5_vl", "gemma3"])
def test_eager_attention_batch_and_reference(family):
    """The same with the eager attention backend: batch == rows alone == reference."""
    model, twin = tiny(family, attn="eager"), tiny(family, attn="eager")
    samples = ragged_samples(family, model)
    handle = visprune.apply(model, "divprune", 0.5)
    tokens, _ = generate(model, collate(samples))
    for row, one in enumerate(samples):
        data = collate([one])
        alone, step_logits = generate(model, data)
        assert torch.equal(tokens[row], alone[0])
        embeds, positions, _ = reference_for(family, twin, data, handle)
        want_tokens, want_logits = reference_decode(twin, embeds, positions)
        assert torch.equal(alone, want_tokens)
        assert_logits_close(step_logits, want_logits)


# ------------------------------------------------------------------------------ 5. selections
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


# ---------------------------------------------------------------- 3. remove, with, replacement
@pytest.mark.parametrize(("family", "video"), CASE_PARAMS)
def test_remove_restores_bit_identical_behaviour(family, video):
    model = tiny(family)
    data = inputs(family, model, video=video, batch=2)
    labels = data["input_ids"].masked_fill(visual_mask(data["input_ids"]), -100)
    before = model(**data, labels=labels)
    cached = model.generate(**data, **GENERATE)
    uncached = model.generate(**data, **GENERATE, use_cache=False)
    handle = visprune.apply(model, "divprune", 0.5)
    assert handle.active and hooks_of(model) == (1, 1)
    pruned = model(**data, labels=labels)
    assert pruned.logits.shape[1] < before.logits.shape[1]
    model.generate(**data, **GENERATE)
    handle.remove()
    assert not handle.active
    assert_unpatched(model)
    after = model(**data, labels=labels)
    assert torch.equal(after.logits, before.logits) and torch.equal(after.loss, before.loss)
    assert torch.equal(model.generate(**data, **GENERATE), cached)
    assert torch.equal(model.generate(**data, **GENERATE, use_cache=False), uncached)
    handle.remove()  # idempotent
    assert_unpatched(model)
    assert torch.equal(model(**data).logits, before.logits)


def test_context_manager_restores_on_exit_and_on_error():
    model = tiny("llava_next")
    data = inputs("llava_next", model)
    logits = model(**data).logits
    with visprune.apply(model, "random", 0.25) as handle:
        assert handle.active
        assert model(**data).logits.shape[1] < logits.shape[1]
    assert not handle.active
    assert_unpatched(model)
    assert torch.equal(model(**data).logits, logits)
    with pytest.raises(RuntimeError), visprune.apply(model, "random", 0.25):
        raise RuntimeError("inside the block")
    assert_unpatched(model)
    assert torch.equal(model(**data).logits, logits)


def test_remove_restores_a_users_loss_function():
    model = tiny("llava")
    data = inputs("llava", model)

    def custom(logits, labels, vocab_size, **kwargs):
        return logits.sum() * 0

    model.loss_function = custom
    handle = visprune.apply(model, "divprune", 0.5)
    assert model(**data, labels=data["input_ids"]).loss == 0
    handle.remove()
    assert model.__dict__["_loss_function"] is custom


@pytest.mark.parametrize("family", ["llava", "qwen2_5_vl"])
def test_applying_again_replaces_the_previous_method(family):
    model, alone = tiny(family), tiny(family)
    data = inputs(family, model, batch=2)
    first = visprune.apply(model, "divprune", 0.5)
    second = visprune.apply(model, "random", 0.5, seed=2)
    assert not first.active and second.active
    assert hooks_of(model) == (1, 1)
    wrapper = model.model.get_image_features
    assert wrapper.__wrapped__.__func__ is type(model.model).get_image_features
    first.remove()  # a replaced handle no longer owns anything
    assert second.active and hooks_of(model) == (1, 1)
    reference = visprune.apply(alone, "random", 0.5, seed=2)
    assert torch.equal(model(**data).logits, alone(**data).logits)
    assert torch.equal(model.generate(**data, **GENERATE), alone.generate(**data, **GENERATE))
    assert_same_selections(second.selections, reference.selections)
    second.remove()
    assert_unpatched(model)


def test_a_failed_apply_leaves_the_previous_handle_in_place():
    """An argument error raises before anything changes, for every argument."""
    model = tiny("llava")
    data = inputs("llava", model)
    handle = visprune.apply(model, "divprune", 0.5)
    pruned = model(**data).logits
    bad_calls = [
        {"method": "divprun", "budget": 0.5},
        {"method": "divprune", "budget": None},
        {"method": "divprune", "budget": 0.5, "positions": "bogus"},
        {"method": "divprune", "budget": 0.5, "newlines": "bogus"},
    ]
    for call in bad_calls:
        with pytest.raises(ValueError):
            visprune.apply(model, **call)
        assert handle.active, call
        assert torch.equal(model(**data).logits, pruned), call


# --------------------------------------------------------------------------- 6. labels, loss
@pytest.mark.parametrize("use_cache", [True, False], ids=["cache", "no-cache"])
@pytest.mark.parametrize(("family", "video"), CASE_PARAMS)
def test_loss_uses_the_labels_of_kept_positions(family, video, use_cache):
    model, twin = tiny(family), tiny(family)
    data = inputs(family, model, video=video, batch=2)
    labels = data["input_ids"].masked_fill(visual_mask(data["input_ids"]), -100)
    handle = visprune.apply(model, "divprune", 0.5)
    out = model(**data, labels=labels, use_cache=use_cache)
    embeds, positions, keep = reference_for(family, twin, data, handle)
    batch, short = embeds.shape[:2]
    assert out.logits.shape == (batch, short, 128)
    torch.testing.assert_close(
        out.logits, reference_prefill(twin, embeds, positions), atol=2e-5, rtol=1e-4
    )
    kept_labels = labels[keep].view(batch, short)
    by_hand = F.cross_entropy(
        out.logits[:, :-1].flatten(0, 1), kept_labels[:, 1:].flatten(), ignore_index=-100
    )
    torch.testing.assert_close(out.loss, by_hand)
    # labels on visual tokens too: the kept visual labels count, the dropped ones do not
    full = model(**data, labels=data["input_ids"], use_cache=use_cache)
    all_kept = data["input_ids"][keep].view(batch, short)
    by_hand = F.cross_entropy(full.logits[:, :-1].flatten(0, 1), all_kept[:, 1:].flatten())
    torch.testing.assert_close(full.loss, by_hand)


def test_loss_of_a_re_padded_batch():
    """Re-padded slots get label -100; each row's labels follow its kept tokens."""
    model = tiny("llava")
    data = collate(ragged_samples("llava", model))
    ids = data["input_ids"]
    labels = ids.masked_fill(visual_mask(ids) | (data["attention_mask"] == 0), -100)
    handle = visprune.apply(model, "divprune", 0.5)
    out = model(**data, labels=labels)
    keep = ~visual_mask(ids) & data["attention_mask"].bool()  # padding is left out too
    for record in handle.selections:
        keep[record.sample, record.positions] = True
    width = int(keep.sum(-1).max())
    assert out.logits.shape[1] == width
    rows = [
        torch.cat([torch.full((width - int(k.sum()),), -100), label[k]])
        for k, label in zip(keep, labels, strict=True)
    ]
    kept_labels = torch.stack(rows)
    by_hand = F.cross_entropy(
        out.logits[:, :-1].flatten(0, 1), kept_labels[:, 1:].flatten(), ignore_index=-100
    )
    torch.testing.assert_close(out.loss, by_hand)


# ------------------------------------------------------ 7. manual decode loops (positions)
@pytest.mark.parametrize("extend_mask", [True, False], ids=["with-mask", "no-mask"])
@pytest.mark.parametrize(("family", "video"), CASE_PARAMS)
def test_manual_decode_loop_continues_positions(family, video, extend_mask):
    """``model(input_ids=next, past_key_values=...)`` without position_ids decodes correctly."""
    model, twin = tiny(family), tiny(family)
    data = inputs(family, model, video=video, batch=2)
    handle = visprune.apply(model, "divprune", 0.5)
    out = model(**data, use_cache=True)
    embeds, positions, _ = reference_for(family, twin, data, handle)
    want_tokens, want_logits = reference_decode(twin, embeds, positions)
    mask = data["attention_mask"]
    for step in range(STEPS):
        torch.testing.assert_close(out.logits[:, -1], want_logits[step], atol=2e-5, rtol=1e-4)
        token = greedy(out.logits[:, -1])
        assert torch.equal(token, want_tokens[:, step])
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        out = model(
            input_ids=token[:, None],
            past_key_values=out.past_key_values,
            attention_mask=mask if extend_mask else None,
            use_cache=True,
        )


@pytest.mark.parametrize("method", ["trimtokenator", "resprune", "rediprune"])
@pytest.mark.parametrize("family", ["llava_onevision", "qwen2_vl"])
def test_text_methods_generate_the_same_with_and_without_cache(family, method):
    """``use_cache`` is an optimisation: the prompt (not the generated tokens) conditions the pick.

    Without a cache every step re-runs the whole sequence; the selection must still use the
    prompt's text, so both runs keep the same tokens and generate the same.
    """
    model = tiny(family)
    data = inputs(family, model, batch=2)
    handle = visprune.apply(model, method, 0.5)
    cached = model.generate(**data, **GENERATE)
    prefill = handle.selections
    uncached = model.generate(**data, **GENERATE, use_cache=False)
    assert torch.equal(uncached, cached)
    assert_same_selections(handle.selections, prefill)


# ------------------------------------------------------------------------- 8. position modes
def record_lm_positions(model) -> tuple[list, object]:
    """Position ids the language model receives (hook added after visprune's, so it sees them)."""
    calls: list = []
    hook = model.model.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: calls.append(kwargs.get("position_ids")), with_kwargs=True
    )
    return calls, hook


@pytest.mark.parametrize("family", ["llava", "llava_next", "llava_onevision", "internvl"])
def test_compact_and_original_positions(family):
    model, twin = tiny(family), tiny(family)
    data = inputs(family, model, batch=2)
    length = data["input_ids"].shape[1]
    prefill = {}
    for mode in ("compact", "original"):
        handle = visprune.apply(model, "divprune", 0.5, positions=mode)
        assert handle.positions == mode
        calls, hook = record_lm_positions(model)
        tokens, step_logits = generate(model, data)
        hook.remove()
        embeds, positions, keep = reference_for(family, twin, data, handle)
        short = embeds.shape[1]
        if mode == "compact":
            assert torch.equal(positions, torch.arange(short).expand(2, -1))
        else:
            assert torch.equal(positions, torch.arange(length).expand(2, -1)[keep].view(2, -1))
        assert torch.equal(calls[0], positions)
        for step, decode in enumerate(calls[1:]):
            assert torch.equal(decode, positions[:, -1:] + 1 + step)
        want_tokens, want_logits = reference_decode(twin, embeds, positions)
        assert torch.equal(tokens, want_tokens)
        assert_logits_close(step_logits, want_logits)
        prefill[mode] = calls[0]
        handle.remove()
    assert not torch.equal(prefill["compact"], prefill["original"])


@pytest.mark.parametrize(("family", "video"), QWEN_CASES)
def test_qwen_keeps_original_m_rope_positions(family, video):
    model, twin = tiny(family), tiny(family)
    data = inputs(family, model, video=video, batch=2)
    with pytest.raises(ValueError, match="original") as error:
        visprune.apply(model, "divprune", 0.5, positions="compact")
    assert "compact" in str(error.value)
    assert_unpatched(model)
    handle = visprune.apply(model, "divprune", 0.5, positions="original")
    assert handle.positions == "original"
    calls, hook = record_lm_positions(model)
    tokens, step_logits = generate(model, data)
    hook.remove()
    embeds, positions, keep = reference_for(family, twin, data, handle)
    rope = {k: data.get(k) for k in ("image_grid_thw", "video_grid_thw", "second_per_grid_ts")}
    full, _ = twin.model.get_rope_index(
        data["input_ids"], mm_token_type_ids=data["mm_token_type_ids"], **rope
    )
    index = keep.nonzero()[:, 1].view(2, -1)
    assert torch.equal(positions, full.gather(-1, index.expand(3, -1, -1)))
    # generate hands the LM 4 rows: the text row, then the gathered M-RoPE rows
    assert calls[0].shape == (4, 2, index.shape[1])
    assert torch.equal(calls[0][1:], positions)
    assert torch.equal(calls[0][0], index)
    for step, decode in enumerate(calls[1:]):
        assert torch.equal(decode[1:], positions[..., -1:] + 1 + step)
    want_tokens, want_logits = reference_decode(twin, embeds, positions)
    assert torch.equal(tokens, want_tokens)
    assert_logits_close(step_logits, want_logits)


# ------------------------------------------------------------------------------- 9. errors
def test_unsupported_model_type_lists_the_supported_ones():
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=128,
    )
    llama = LlamaForCausalLM(config).eval()
    with pytest.raises(ValueError, match="'llama'") as error:
        visprune.apply(llama, "divprune", 0.5)
    for supported in (
        "gemma3",
        "llava",
        "llava_next",
        "llava_next_video",
        "llava_onevision",
        "qwen2_vl",
        "qwen2_5_vl",
        "qwen3_vl",
        "qwen3_vl_moe",
        "internvl",
    ):
        assert supported in str(error.value)
    assert not llama.model._forward_pre_hooks and "_loss_function" not in llama.__dict__


def test_a_sub_module_is_refused():
    model = tiny("llava")
    with pytest.raises(ValueError, match="LlavaForConditionalGeneration"):
        visprune.apply(model.model, "divprune", 0.5)
    assert_unpatched(model)


def test_a_method_without_budget_raises():
    model = tiny("llava")
    with pytest.raises(ValueError, match="budget"):
        visprune.apply(model, "divprune")
    with pytest.raises(ValueError, match="budget"):
        visprune.apply(model, "divprune", 1.5)
    with pytest.raises(ValueError, match="no budget"):
        visprune.apply(model, "keepall", 0.5)
    assert_unpatched(model)


def test_an_unknown_method_raises_with_suggestions():
    model = tiny("llava")
    with pytest.raises(ValueError, match="Did you mean 'divprune'") as error:
        visprune.apply(model, "divprun", 0.5)
    assert isinstance(error.value, KeyError)
    assert "random" in str(error.value)
    with pytest.raises(ValueError, match="has no parameter"):
        visprune.apply(model, "divprune", 0.5, gamma=1.0)
    assert_unpatched(model)


def test_bad_option_values_raise():
    model = tiny("llava_next")
    with pytest.raises(ValueError, match="compact, original"):
        visprune.apply(model, "divprune", 0.5, positions="bogus")
    assert_unpatched(model)
    with pytest.raises(ValueError, match="newlines"):
        visprune.apply(model, "divprune", 0.5, newlines="bogus")
    assert_unpatched(model)


@pytest.mark.parametrize(("family", "video"), CASE_PARAMS)
def test_placeholder_count_mismatch_raises(family, video):
    """One placeholder too few for the image features: an error, never a silent misalignment.

    The first placeholder id is replaced by a text id (Qwen's M-RoPE token types stay as they
    were, so only the placeholder count is inconsistent).
    """
    model = tiny(family)
    data = inputs(family, model, video=video)
    first = int(visual_mask(data["input_ids"][0]).nonzero()[0])
    data["input_ids"][:, first] = 5
    visprune.apply(model, "divprune", 0.5)
    with pytest.raises(ValueError, match="tokens"):
        model(**data)
    with pytest.raises(ValueError, match="tokens"):
        model.generate(**data, **GENERATE)


@pytest.mark.parametrize("family", ["llava", "llava_onevision", "qwen2_5_vl", "gemma3"])
def test_prompts_without_images_run_unpruned(family):
    model = tiny(family)
    text = collate([sample(family, model, images=0, prefix=4, suffix=5, seed=3)])
    text.pop("mm_token_type_ids", None)
    logits = model(**text).logits
    generated = model.generate(**text, **GENERATE)
    handle = visprune.apply(model, "divprune", 0.5)
    assert torch.equal(model(**text).logits, logits)
    assert handle.selections == []
    assert torch.equal(model.generate(**text, **GENERATE), generated)
    assert handle.selections == []


def test_a_text_only_call_clears_the_last_selections():
    model = tiny("llava")
    handle = visprune.apply(model, "divprune", 0.5)
    model(**inputs("llava", model))
    assert len(handle.selections) == 1
    model(**collate([sample("llava", model, images=0, seed=3)]))
    assert handle.selections == []


# ----------------------------------------------------------- 10. LLaVA-NeXT newlines="keep"
@pytest.mark.parametrize("family", ["llava_next", "llava_onevision"])
def test_newlines_keep_keeps_every_newline_outside_the_budget(family):
    model, twin = tiny(family), tiny(family)
    data = inputs(family, model, batch=2)
    captured = lm_inputs(twin, data)
    newlines = newline_mask(twin, data, captured["embeds"], kinds=("image",))
    per_row = int(newlines[0].sum())
    images = int((data["input_ids"][0] == IMG).sum())
    assert per_row > 0

    handle = visprune.apply(model, "divprune", 0.25)  # default: newlines compete
    model(**data)
    assert [r.n for r in handle.selections] == [images, images]

    handle = visprune.apply(model, "divprune", 0.25, newlines="keep")
    tokens, step_logits = generate(model, data)
    records = handle.selections
    assert [r.n for r in records] == [images - per_row] * 2
    for record in records:
        assert len(record.kept) == handle.method.num_keep(images - per_row)
        assert not bool(newlines[record.sample, record.positions].any())
    embeds, positions, keep = reference_for(family, twin, data, handle, newlines="keep")
    assert bool(keep[newlines].all())
    assert embeds.shape[1] == data["input_ids"].shape[1] - images + per_row + len(records[0].kept)
    want_tokens, want_logits = reference_decode(twin, embeds, positions)
    assert torch.equal(tokens, want_tokens)
    assert_logits_close(step_logits, want_logits)


# ----------------------------------------------------------------------- 11. per instance
def test_applying_to_one_instance_leaves_another_unchanged():
    model, other = tiny("llava_next"), tiny("llava_next")
    data = inputs("llava_next", model, batch=2)
    logits = other(**data).logits
    generated = other.generate(**data, **GENERATE)
    methods = {name: getattr(type(other), name) for name in ("forward", "generate")}
    base_methods = {
        name: getattr(type(other.model), name) for name in ("forward", "get_image_features")
    }
    handle = visprune.apply(model, "divprune", 0.5)
    assert model(**data).logits.shape[1] < logits.shape[1]
    assert_unpatched(other)
    assert torch.equal(other(**data).logits, logits)
    assert torch.equal(other.generate(**data, **GENERATE), generated)
    assert methods == {name: getattr(type(other), name) for name in methods}
    assert base_methods == {name: getattr(type(other.model), name) for name in base_methods}
    # a second instance with its own method: the two do not interfere
    alone = tiny("llava_next")
    visprune.apply(alone, "random", 0.5, seed=4)
    visprune.apply(other, "random", 0.5, seed=4)
    assert handle.active
    assert torch.equal(other.generate(**data, **GENERATE), alone.generate(**data, **GENERATE))
    assert not torch.equal(model(**data).logits, other(**data).logits)


def test_rediprune_reads_pooled_pre_projector_frames_of_llava_next_video():
    """ReDiPrune's own setting: per frame, the pooled vision features before the projector."""
    model = tiny("llava_next_video")
    data = collate(ragged_samples("llava_next_video", model, video=True))
    captured = lm_inputs(model, data)
    pooled: list[Tensor] = []
    hook = model.model.multi_modal_projector.register_forward_pre_hook(
        lambda module, inputs: pooled.append(inputs[0])
    )
    handle = visprune.apply(model, "rediprune", 0.5)
    model(**data)
    hook.remove()
    frames = pooled[0].reshape(-1, 4, pooled[0].shape[-1])  # (videos * frames, 2x2, c)
    assert len(handle.selections) == len(frames)
    for record, tokens in zip(handle.selections, frames, strict=True):
        text = prompt_text(captured["embeds"], data, record.sample)
        assert torch.equal(record.kept, visprune.select("rediprune", tokens, 0.5, text=text))


@pytest.mark.parametrize("video", [False, True], ids=["image", "video"])
def test_qwen3_deepstack_reaches_the_language_model_pruned(video):
    """Every deepstack level keeps exactly the rows of the kept visual tokens, in order."""
    model = tiny("qwen3_vl")
    data = collate(ragged_samples("qwen3_vl", model, video))
    full = lm_inputs(model, data)
    handle = visprune.apply(model, "divprune", 0.5)
    seen = lm_inputs(model, data)  # hook added after visprune's: sees the shortened inputs
    keep = keep_mask(data["input_ids"], handle.selections, torch.zeros_like(data["input_ids"]) > 0)
    kept_rows = keep[full["visual"]]
    assert int(seen["visual"].sum()) == int(kept_rows.sum()) < int(full["visual"].sum())
    assert len(seen["deepstack"]) == len(full["deepstack"]) == 2
    for pruned, whole in zip(seen["deepstack"], full["deepstack"], strict=True):
        assert torch.equal(pruned, whole[kept_rows])


# -------------------------------------------------- 12. Gemma 3: bidirectional image blocks
def masks_received(model, data: dict) -> dict:
    """The attention masks the language model receives at ``model(**data)`` (after visprune's
    hook), as bool ``(B, 1, q, kv)`` per layer type (eager's float masks: 0 where attended)."""
    seen: list = []
    hook = model.model.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["attention_mask"]), with_kwargs=True
    )
    try:
        model(**data)
    finally:
        hook.remove()
    return {kind: mask if mask.dtype == torch.bool else mask == 0 for kind, mask in seen[0].items()}


def expected_gemma3_masks(data: dict, selections: list[Selection]) -> tuple[dict, Tensor]:
    """The masks of the pruned sequence, derived from the selections alone, and which of its
    slots hold a token (not re-padding nor padding), both ``(B, L')``-based.

    Kept image tokens of one image attend to each other both ways, everything else causally;
    sliding-window layers also only to the last ``GEMMA3_WINDOW`` slots; nothing to padding.
    """
    ids = data["input_ids"]
    batch = ids.shape[0]
    block = torch.full_like(ids, -1)
    for number, record in enumerate(selections):
        block[record.sample, record.positions] = number
    keep = (~visual_mask(ids) | (block >= 0)) & data["attention_mask"].bool()
    width = int(keep.sum(-1).max())
    slots = torch.full((batch, width), -1)
    for row in range(batch):
        kept = keep[row].nonzero().squeeze(-1)
        slots[row, width - len(kept) :] = kept
    real = (slots >= 0) & data["attention_mask"].gather(1, slots.clamp_min(0)).bool()
    blocks = block.gather(1, slots.clamp_min(0)).masked_fill(slots < 0, -1)
    q = torch.arange(width)[:, None]
    k = torch.arange(width)[None, :]
    same = (blocks[:, :, None] == blocks[:, None, :]) & (blocks[:, :, None] >= 0)
    full = ((k <= q) | same) & real[:, None, :]
    sliding = full & (k > q - GEMMA3_WINDOW)
    return {"full_attention": full, "sliding_attention": sliding}, real


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_gemma3_pruned_masks_keep_each_images_block_bidirectional(attn):
    """Left-padded rows keeping different counts: every real query row of the masks the language
    model gets is the expected pattern over the shortened (re-padded) sequence."""
    model = tiny("gemma3", attn=attn)
    data = collate(ragged_samples("gemma3", model))
    handle = visprune.apply(model, "divprune", 0.5)
    got = masks_received(model, data)
    want, real = expected_gemma3_masks(data, handle.selections)
    assert set(got) == set(want)
    for kind, mask in want.items():
        assert got[kind].shape == (2, 1, *mask.shape[1:]), kind
        for row in range(2):
            rows = real[row]
            assert torch.equal(got[kind][row, 0][rows], mask[row][rows]), (kind, row)
    # the image blocks are really there: a kept image token sees a later one of its image
    first = handle.selections[0]
    assert len(first.kept) > 1 and bool(want["full_attention"][first.sample].triu(1).any())


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_gemma3_logits_follow_the_bidirectional_blocks(attn):
    """Pruned logits equal the reference built by transformers from the shortened token types,
    and differ from a run on the same shortened sequence with causal masks only."""
    model, twin = tiny("gemma3", attn=attn), tiny("gemma3", attn=attn)
    data = inputs("gemma3", model, batch=2, images=2)
    handle = visprune.apply(model, "divprune", 0.5)
    logits = model(**data).logits
    embeds, positions, _ = reference_for("gemma3", twin, data, handle)
    want = reference_prefill(twin, embeds, positions)
    torch.testing.assert_close(logits, want, atol=2e-5, rtol=1e-4)
    types, twin._reference_types = twin._reference_types, None
    causal = reference_prefill(twin, embeds, positions)  # the same sequence, causal masks only
    first_image = int(handle.selections[0].positions[0])
    assert (logits - causal)[:, first_image:].abs().amax() > 1e-3
    twin._reference_types = types
    tokens, step_logits = generate(model, data)
    want_tokens, want_logits = reference_decode(twin, embeds, positions)
    assert torch.equal(tokens, want_tokens)
    assert_logits_close(step_logits, want_logits)


def test_gemma3_without_token_types_is_causal_as_the_unpatched_model():
    """No ``token_type_ids``: the unpatched model builds causal masks, and so does the pruned."""
    model, twin = tiny("gemma3"), tiny("gemma3")
    data = inputs("gemma3", model, batch=2)
    del data["token_type_ids"]
    logits = model(**data).logits
    with visprune.apply(model, "keepall"):
        assert torch.equal(model(**data).logits, logits)
    handle = visprune.apply(model, "divprune", 0.5)
    tokens, step_logits = generate(model, data)
    embeds, positions, _ = reference_for("gemma3", twin, data, handle)
    assert twin._reference_types is None  # the reference runs causal masks too
    want_tokens, want_logits = reference_decode(twin, embeds, positions)
    assert torch.equal(tokens, want_tokens)
    assert_logits_close(step_logits, want_logits)


def test_gemma3_original_positions_match_the_reference():
    model, twin = tiny("gemma3"), tiny("gemma3")
    data = inputs("gemma3", model, batch=2)
    handle = visprune.apply(model, "divprune", 0.5, positions="original")
    assert handle.positions == "original"
    tokens, step_logits = generate(model, data)
    embeds, positions, keep = reference_for("gemma3", twin, data, handle)
    length = data["input_ids"].shape[1]
    assert torch.equal(positions, torch.arange(length).expand(2, -1)[keep].view(2, -1))
    want_tokens, want_logits = reference_decode(twin, embeds, positions)
    assert torch.equal(tokens, want_tokens)
    assert_logits_close(step_logits, want_logits)
