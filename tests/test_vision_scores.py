"""VisPruner and VisionZip through ``visprune.apply``: scores from the vision tower, merged tokens.

The references never go through visprune. They run an *eager* twin's vision tower with
``output_attentions=True`` (the attention weights transformers itself computes), take the CLS row
and the hidden states of the selected layer, the key projections of its input, pack LLaVA-NeXT
crops with the model's own ``pack_image_features``, run the functional cores, project VisionZip's
new tokens with the twin's projector, write them by hand into the slots the adapter documents
(the image's last dropped candidates), and run the plain language model. The pruned model keeps
SDPA: the scores are recomputed from the layer's q/k projections.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor
from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

import visprune
import visprune.functional as F
from pruned_reference import (
    always_kept,
    assert_logits_close,
    assert_unpatched,
    generate,
    keep_mask,
    lm_inputs,
    reference_decode,
    reference_prefill,
    shorten,
)
from tiny_vlms import GENERATE, collate, inputs, ragged_samples, tiny

#: Families whose tower has a CLS token (CLIP), images only.
CLIP_FAMILIES = ["llava", "llava_next", "llava_next_video"]
#: Families whose tower has none (SigLIP, Qwen's ViT, InternViT's pixel-shuffled tokens).
NO_CLS_FAMILIES = ["llava_onevision", "gemma3", "qwen2_vl", "qwen2_5_vl", "qwen3_vl", "internvl"]
#: Budgets per family: about half of each image, with a contextual token to merge.
BUDGET = {"llava": 3, "llava_next": 6, "llava_next_video": 20}
VISIONZIP = {"contextual_ratio": 0.34}


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


# ----------------------------------------------------------------------- scores by hand
def vision_layers(model):
    """The CLIP tower's encoder layers (5.2x: on the tower; older: on its ``vision_model``)."""
    tower = model.model.vision_tower
    return getattr(tower, "vision_model", tower).encoder.layers


def crops_per_image(model, data: dict) -> list[int]:
    """Crops of each image (1 for LLaVA-1.5; base + anyres tiles for LLaVA-NeXT)."""
    if "image_sizes" not in data:
        return [1] * len(data["pixel_values"])
    config = model.config
    return [
        image_size_to_num_patches(
            image_size=size,
            grid_pinpoints=config.image_grid_pinpoints,
            patch_size=config.vision_config.image_size,
        )
        for size in data["image_sizes"].tolist()
    ]


def eager_scores(eager, data: dict) -> list[dict[str, Tensor]]:
    """Per image: ``attention`` ``(H, 1 + n)``, ``hidden`` ``(1 + n, D)``, ``keys``
    ``(1 + n, hd)`` with the (base crop's) CLS token at 0 and the patches packed as the model
    packs its features; from the eager tower's own attention weights."""
    config = eager.config
    crops = crops_per_image(eager, data)
    pixels = data["pixel_values"]
    if pixels.dim() == 5:  # LLaVA-NeXT: drop the padding crops, as the model does
        pixels = torch.cat([image[:count] for image, count in zip(pixels, crops, strict=True)])
    tower = eager.model.vision_tower
    out = tower(pixels, output_attentions=True, output_hidden_states=True)
    layers = vision_layers(eager)
    chosen = config.vision_feature_layer
    index = chosen - 1 if chosen > 0 else len(layers) + chosen
    embeddings = index < 0  # features from the embeddings: the first layer's attention
    index = max(index, 0)
    layer = layers[index]
    heads = layer.self_attn.num_heads
    attention = out.attentions[index][:, :, 0]  # (C, H, T): the CLS query row
    hidden = out.hidden_states[index + (0 if embeddings else 1)]
    assert torch.equal(hidden, out.hidden_states[chosen])
    keys = layer.self_attn.k_proj(layer.layer_norm1(out.hidden_states[index]))
    keys = keys.view(*keys.shape[:2], heads, -1).mean(dim=2)  # (C, T, hd)
    per_crop = torch.cat([attention.transpose(1, 2), hidden, keys], dim=-1)[:, 1:]
    if "image_sizes" in data:
        strategy = config.vision_feature_select_strategy
        packed, _ = eager.model.pack_image_features(
            list(per_crop.split(crops)), data["image_sizes"], strategy, image_newline=None
        )
    else:
        packed = list(per_crop)
    firsts = torch.tensor([0, *crops[:-1]]).cumsum(0).tolist()
    width = hidden.shape[-1]
    images = []
    for patches, first in zip(packed, firsts, strict=True):
        cls = torch.cat([attention[first].T[:1], hidden[first, :1], keys[first, :1]], dim=-1)
        full = torch.cat([cls, patches])
        images.append(
            {
                "attention": full[:, :heads].T,
                "hidden": full[:, heads : heads + width],
                "keys": full[:, heads + width :],
            }
        )
    return images


def candidates_of(family: str, model, data: dict, stage: str = "vision") -> list[Tensor]:
    """Per image (in batch, then prompt order): its candidate positions, flattened per row."""
    captured = lm_inputs(model, data)
    fixed = always_kept(family, model, data, captured["embeds"], "candidates", stage)
    out = []
    crops = crops_per_image(model, data)
    image = 0
    for row, ids in enumerate(data["input_ids"]):
        positions = (ids == model.config.image_token_id).nonzero().squeeze(-1)
        # Images of a row are consecutive runs of placeholders separated by a text token.
        runs = torch.tensor_split(positions, (positions.diff() != 1).nonzero().squeeze(-1) + 1)
        for run in runs:
            out.append((row, run[~fixed[row, run]]))
            image += 1
    assert image == len(crops)
    return out


# ----------------------------------------------------------------------------- VisPruner
@pytest.mark.parametrize("family", CLIP_FAMILIES)
def test_vispruner_generate_matches_eager_reference(family):
    """Kept tokens are VisPruner's picks on the eager tower's CLS attention; generation and
    logits equal the plain model on the hand-shortened sequence (SDPA in the pruned model)."""
    model, twin, eager = tiny(family), tiny(family), tiny(family, attn="eager")
    data = inputs(family, model, batch=2)
    k = BUDGET[family]
    handle = visprune.apply(model, "vispruner", k)
    tokens, step_logits = generate(model, data)
    assert model.model.vision_tower.config._attn_implementation == "sdpa"
    scores = eager_scores(eager, data)
    spans = candidates_of(family, twin, data)
    assert len(handle.selections) == len(scores) == len(spans)
    for record, image, (row, span) in zip(handle.selections, scores, spans, strict=True):
        want = F.vispruner(image["hidden"][None, 1:], image["attention"][None, :, 1:], k)[0]
        assert record.sample == row and torch.equal(record.candidates, span)
        assert torch.equal(record.kept, want)
        assert record.merged_positions is None and record.merged is None
    captured = lm_inputs(twin, data)
    fixed = always_kept(family, twin, data, captured["embeds"], "candidates", "vision")
    keep = keep_mask(data["input_ids"], handle.selections, fixed)
    embeds, positions = shorten(captured, keep, "compact")
    torch.testing.assert_close(
        model(**data).logits, reference_prefill(twin, embeds, positions), atol=2e-5, rtol=1e-4
    )
    want_tokens, want_logits = reference_decode(twin, embeds, positions)
    assert torch.equal(tokens, want_tokens)
    assert_logits_close(step_logits, want_logits)


# ----------------------------------------------------------------------------- VisionZip
def visionzip_reference(image: dict[str, Tensor], k: int) -> tuple[Tensor, Tensor, int]:
    """VisionZip's core on one image's eager scores (:func:`eager_scores`) for a budget ``k``
    that counts the CLS token: the kept patch indices ``(k - new,)``, the contextual tokens
    merged from the rest ``(new - 1, d)`` and ``new`` (those plus the CLS)."""
    patches, new = visprune.VisionZip(**VISIONZIP).split(k, with_cls=True)
    indices, merged = F.visionzip(
        image["attention"][None],
        image["hidden"][None],
        image["keys"][None],
        patches + 1,
        new - 1,
    )
    return indices[0, 1:] - 1, merged[0], new


def visionzip_by_hand(family: str, twin, eager, data: dict, k: int):
    """Embeddings with the new tokens in their slots, the keep mask, and per image the kept
    indices, slot positions and projected new tokens, all computed without visprune."""
    captured = lm_inputs(twin, data)
    embeds = captured["embeds"].clone()
    fixed = always_kept(family, twin, data, captured["embeds"], "candidates", "vision")
    keep = ~((data["input_ids"] == twin.config.image_token_id) & ~fixed)
    expected = []
    for image, (row, span) in zip(
        eager_scores(eager, data), candidates_of(family, twin, data), strict=True
    ):
        kept, merged, new = visionzip_reference(image, k)
        tokens = torch.cat([image["hidden"][:1], merged])
        projected = twin.model.multi_modal_projector(tokens)
        dropped = torch.ones(len(span), dtype=torch.bool)
        dropped[kept] = False
        slots = span[dropped][-new:]
        keep[row, span[kept]] = True
        keep[row, slots] = True
        embeds[row, slots] = projected
        expected.append((row, kept, slots, projected))
    return {"embeds": embeds, "positions": captured["positions"]}, keep, expected


@pytest.mark.parametrize("use_cache", [True, False], ids=["cache", "no-cache"])
@pytest.mark.parametrize("family", CLIP_FAMILIES)
def test_visionzip_generate_matches_hand_merged_reference(family, use_cache):
    """Dominant patches, the CLS token and the contextual tokens (merged in vision space, then
    projected) in the image's last dropped slots: generation equals the plain model on them."""
    model, twin, eager = tiny(family), tiny(family), tiny(family, attn="eager")
    data = inputs(family, model, batch=2)
    k = BUDGET[family]
    handle = visprune.apply(model, "visionzip", k, **VISIONZIP)
    tokens, step_logits = generate(model, data, use_cache=use_cache)
    captured, keep, expected = visionzip_by_hand(family, twin, eager, data, k)
    assert len(handle.selections) == len(expected)
    for record, (row, kept, slots, projected) in zip(handle.selections, expected, strict=True):
        assert record.sample == row
        assert torch.equal(record.kept, kept)
        assert torch.equal(record.merged_positions, slots)
        torch.testing.assert_close(record.merged, projected, atol=1e-5, rtol=1e-5)
        assert len(record.kept) + len(record.merged) == k
    embeds, positions = shorten(captured, keep, "compact")
    assert embeds.shape[1] == model(**data).logits.shape[1]
    want_tokens, want_logits = reference_decode(twin, embeds, positions, use_cache=use_cache)
    assert torch.equal(tokens, want_tokens)
    assert_logits_close(step_logits, want_logits)


@pytest.mark.parametrize("family", CLIP_FAMILIES)
def test_visionzip_original_positions_keep_slots_in_place(family):
    """With ``positions="original"`` kept tokens and slots keep their own positions."""
    model, twin, eager = tiny(family), tiny(family), tiny(family, attn="eager")
    data = inputs(family, model, batch=2)
    k = BUDGET[family]
    visprune.apply(model, "visionzip", k, positions="original", **VISIONZIP)
    captured, keep, _ = visionzip_by_hand(family, twin, eager, data, k)
    embeds, positions = shorten(captured, keep, "original")
    torch.testing.assert_close(
        model(**data).logits, reference_prefill(twin, embeds, positions), atol=2e-5, rtol=1e-4
    )


# ------------------------------------------------------- identity, batches, removal, errors
@pytest.mark.parametrize("method", ["vispruner", "visionzip"])
@pytest.mark.parametrize("family", CLIP_FAMILIES)
def test_full_budget_is_bit_identical(family, method):
    """A budget of every token keeps the sequence as it is (nothing merged)."""
    model = tiny(family)
    data = inputs(family, model, batch=2)
    logits = model(**data).logits
    cached = model.generate(**data, **GENERATE)
    with visprune.apply(model, method, 1.0) as handle:
        assert torch.equal(model(**data).logits, logits)
        assert torch.equal(model.generate(**data, **GENERATE), cached)
        for record in handle.selections:
            assert torch.equal(record.kept, torch.arange(record.n))
            assert record.merged_positions is None
    assert_unpatched(model)


@pytest.mark.parametrize("method", ["vispruner", "visionzip"])
@pytest.mark.parametrize("family", CLIP_FAMILIES)
def test_left_padded_batch_equals_each_row_alone(family, method):
    """Rows with different images and lengths select and generate as they do alone."""
    model = tiny(family)
    samples = ragged_samples(family, model)
    params = VISIONZIP if method == "visionzip" else {}
    handle = visprune.apply(model, method, 0.5, **params)
    tokens, step_logits = generate(model, collate(samples))
    together = handle.selections
    for row, one in enumerate(samples):
        alone_tokens, alone_logits = generate(model, collate([one]))
        assert torch.equal(tokens[row], alone_tokens[0])
        assert_logits_close([x[row] for x in step_logits], [x[0] for x in alone_logits])
        mine = [r for r in together if r.sample == row]
        assert len(mine) == len(handle.selections)
        for got, want in zip(mine, handle.selections, strict=True):
            assert torch.equal(got.kept, want.kept)
            if want.merged is not None:
                torch.testing.assert_close(got.merged, want.merged)


@pytest.mark.parametrize("method", ["vispruner", "visionzip"])
@pytest.mark.parametrize("family", CLIP_FAMILIES)
def test_remove_restores_the_model(family, method):
    """After ``remove`` no hook is left, on the vision layer either, and outputs are as before."""
    model = tiny(family)
    data = inputs(family, model, batch=2)
    logits = model(**data).logits
    layer = vision_layers(model)[0]

    def hooks():  # transformers adds its own output-capturing hooks: count, don't expect none
        return len(layer.self_attn._forward_pre_hooks), len(layer._forward_hooks)

    before = hooks()
    handle = visprune.apply(model, method, 0.5)
    assert hooks() == (before[0] + 1, before[1] + 1)
    pruned = model(**data).logits
    assert pruned.shape[1] < logits.shape[1]
    handle.remove()
    handle.remove()
    assert hooks() == before
    assert torch.equal(model(**data).logits, logits)
    assert_unpatched(model)


@pytest.mark.parametrize("method", ["vispruner", "visionzip"])
@pytest.mark.parametrize("family", NO_CLS_FAMILIES)
def test_towers_without_cls_refuse_at_apply(family, method):
    """No CLS token: ``apply`` raises naming what is needed and which methods need it, and
    leaves the model and an earlier handle as they were."""
    model = tiny(family)
    outer = visprune.apply(model, "divprune", 0.5)
    with pytest.raises(ValueError, match=rf"{method} cannot run on .*cls_attention.*vispruner"):
        visprune.apply(model, method, 0.5)
    assert outer.active
    outer.remove()
    assert_unpatched(model)


def test_concatenated_feature_layers_refuse_at_apply():
    """Several vision feature layers have no single CLS row: refused at apply."""
    model = tiny("llava")
    model.config.vision_feature_layer = [-2, -1]
    with pytest.raises(ValueError, match="vision_feature_layer"):
        visprune.apply(model, "visionzip", 0.5)
    assert visprune.apply(model, "cdpruner", 0.5).active  # needs no CLS


@pytest.mark.parametrize("method", ["vispruner", "visionzip"])
def test_video_frames_refuse_before_the_language_model(method):
    """LLaVA-NeXT-Video pools frames after the tower: no CLS attention per token, so a video
    prompt raises (saying what is missing) before anything runs unpruned."""
    model = tiny("llava_next_video")
    data = inputs("llava_next_video", model, video=True, batch=1)
    with visprune.apply(model, method, 0.5):
        with pytest.raises(ValueError, match=rf"{method} needs cls_attention.*video"):
            model.generate(**data, **GENERATE)


@pytest.mark.parametrize("chosen", [-3])  # 0 too, but transformers reads 0 as "no hidden states"
@pytest.mark.parametrize("method", ["vispruner", "visionzip"])
def test_features_from_the_embeddings_are_scored_by_the_first_layer(method, chosen):
    """The demo model's tower reads its features from the embeddings, where no attention ran:
    the first layer's CLS row (which reads them) scores them; kept tokens match that reference."""
    model, eager = tiny("llava"), tiny("llava", attn="eager")
    for each in (model, eager):
        each.config.vision_feature_layer = chosen
    data = inputs("llava", model, batch=2)
    handle = visprune.apply(model, method, 3, **(VISIONZIP if method == "visionzip" else {}))
    model(**data)
    for record, image in zip(handle.selections, eager_scores(eager, data), strict=True):
        if method == "vispruner":
            want = F.vispruner(image["hidden"][None, 1:], image["attention"][None, :, 1:], 3)[0]
        else:
            want = visionzip_reference(image, 3)[0]
        assert torch.equal(record.kept, want)
