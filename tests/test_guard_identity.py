"""The never-silent guard never refuses a healthy call, and what encodes no image runs as text.

A call (or a decode step) that brings no pixel values and no encoder output is text, whatever
token ids it holds: it runs exactly as the unpatched model runs it. A call that brings images
is pruned or refused. Per-call state starts empty on every call, so nothing one call encoded
ever prunes another.
"""

from __future__ import annotations

import inspect

import pytest
import torch

import visprune
from tiny_vlms import FAMILIES, GENERATE, IMG, QWEN, VIDEO, collate, inputs, sample, tiny
from visprune import compat
from visprune.compat import PruningNotApplied

#: A text id that no prompt of tiny_vlms holds; its embedding is made the placeholder's.
TWIN_TOKEN = 90
#: Greedy decoding that may emit any id (tiny_vlms.GENERATE suppresses the placeholders).
FREE = {"do_sample": False, "max_new_tokens": 4, "output_logits": True}
#: Inputs that carry pixels or describe them (everything but the prompt, mask and token types).
VISUAL_KEYS = (
    "pixel_values",
    "pixel_values_videos",
    "image_sizes",
    "batch_num_images",
    "image_grid_thw",
    "video_grid_thw",
    "second_per_grid_ts",
)
METHODS = ("keepall", "divprune")
#: Families that take video placeholders (the rest have only images).
KINDS = [pytest.param(f, False, id=f) for f in FAMILIES] + [
    pytest.param(f, True, id=f"{f}-video") for f in FAMILIES if f in VIDEO
]


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


def rig(model, token: int, bias: float = 30.0):
    """Make ``model`` greedily emit ``token`` from its first generated step on (an lm_head bias)."""
    head = model.get_output_embeddings()
    if head.bias is None:
        head.bias = torch.nn.Parameter(torch.zeros(head.out_features))
    head.bias.data[token] += bias
    return model


def text_embedding_of_placeholder(model, placeholder: int):
    """Give ``TWIN_TOKEN`` the embedding of ``placeholder``: the same input, but text."""
    table = model.get_input_embeddings().weight
    table.data[TWIN_TOKEN] = table.data[placeholder]
    return model


def applied(model, method: str):
    """``method`` on ``model``, at half the tokens when it prunes."""
    return (
        visprune.apply(model, method) if method == "keepall" else visprune.apply(model, method, 0.5)
    )


def generate(model, data: dict, **options):
    out = model.generate(**data, **FREE, return_dict_in_generate=True, **options)
    return out.sequences, torch.stack(out.logits, dim=1)


def without_visuals(data: dict) -> dict:
    return {key: value for key, value in data.items() if key not in VISUAL_KEYS}


# -------------------------------------------------- a generated placeholder id is text
@pytest.mark.parametrize("family", FAMILIES)
def test_keepall_generating_a_placeholder_id_equals_the_unpatched_model(family):
    """A decode step whose token is the image placeholder id encodes nothing: it is text."""
    model, twin = rig(tiny(family), IMG), rig(tiny(family), IMG)
    data = inputs(family, model, batch=2)
    want_tokens, want_logits = generate(twin, data)
    prompt = data["input_ids"].shape[1]
    assert bool((want_tokens[:, prompt:] == IMG).all())  # the rig works: every step is IMG
    handle = visprune.apply(model, "keepall")
    tokens, logits = generate(model, data)
    assert torch.equal(tokens, want_tokens)
    torch.testing.assert_close(logits, want_logits, atol=1e-5, rtol=1e-5)
    assert len(handle.selections) > 0  # the prompt's images went through the method


@pytest.mark.parametrize("family", FAMILIES)
def test_pruned_generate_of_a_placeholder_id_equals_the_same_embedding_as_text(family):
    """With a pruning method, a generated placeholder id decodes as a text token with the same
    embedding does (``TWIN_TOKEN``): same selections, same logits outside the two ids."""
    model = text_embedding_of_placeholder(rig(tiny(family), IMG), IMG)
    twin = text_embedding_of_placeholder(rig(tiny(family), TWIN_TOKEN), IMG)
    data = inputs(family, model, batch=2)
    prompt = data["input_ids"].shape[1]
    reference = visprune.apply(twin, "divprune", 0.5)
    want_tokens, want_logits = generate(twin, data)
    handle = visprune.apply(model, "divprune", 0.5)
    tokens, logits = generate(model, data)
    assert bool((tokens[:, prompt:] == IMG).all())
    assert bool((want_tokens[:, prompt:] == TWIN_TOKEN).all())
    others = [i for i in range(logits.shape[-1]) if i not in (IMG, TWIN_TOKEN)]
    torch.testing.assert_close(logits[..., others], want_logits[..., others], atol=1e-5, rtol=1e-5)
    assert [s.kept.tolist() for s in handle.selections] == [
        s.kept.tolist() for s in reference.selections
    ]


@pytest.mark.parametrize("route", ["pixels", "encoder outputs"])
def test_a_cached_step_that_brings_images_still_raises(route):
    """A real chunked prefill (the second chunk brings the images) is refused."""
    model = tiny("llava")
    data = inputs("llava", model)
    visprune.apply(model, "keepall")
    ids, mask = data["input_ids"], data["attention_mask"]
    first = int((ids[0] == IMG).nonzero()[0])
    out = model(input_ids=ids[:, :first], attention_mask=mask[:, :first], use_cache=True)
    if route == "pixels":
        images = {"pixel_values": data["pixel_values"]}
    else:
        needs_encoder_outputs(model)
        images = {
            "mm_encoder_outputs": {"image": model.model.get_image_features(data["pixel_values"])}
        }
    with pytest.raises(ValueError, match="prompt arrives in chunks"):
        model(
            input_ids=ids[:, first:],
            attention_mask=mask,
            **compat.cache_argument(model, compat.output_cache(out)),
            **images,
        )


# ------------------------------------------------- a call that encodes nothing is text
@pytest.mark.parametrize(("family", "video"), KINDS)
@pytest.mark.parametrize("method", METHODS)
def test_placeholders_without_pixels_run_as_the_unpatched_model(family, video, method):
    model, twin = tiny(family), tiny(family)
    data = without_visuals(inputs(family, model, video=video, batch=2))
    want = twin(**data).logits
    handle = (
        visprune.apply(model, method, 0.5) if method != "keepall" else visprune.apply(model, method)
    )
    assert torch.equal(model(**data).logits, want)
    assert handle.selections == []


@pytest.mark.parametrize(("family", "video"), KINDS)
def test_a_call_after_an_encoding_call_starts_empty(family, video):
    """Encode, then a call with placeholders but no pixels: vanilla output, no selections."""
    model, twin = tiny(family), tiny(family)
    data = inputs(family, model, video=video, batch=2)
    bare = without_visuals(data)
    want = twin(**bare).logits
    handle = visprune.apply(model, "uniform", 2)
    model(**data)
    assert len(handle.selections) > 0
    assert torch.equal(model(**bare).logits, want)
    assert handle.selections == []
    model.generate(**data, **GENERATE)  # the 5.24+ route: encoded by generate, then dropped
    assert torch.equal(model(**bare).logits, want)
    assert handle.selections == []


def test_video_placeholders_beside_images_are_text_after_a_video_call():
    """LLaVA-NeXT-Video: an earlier call's video records never prune a later call's placeholders."""
    family = "llava_next_video"
    model, twin = tiny(family), tiny(family)
    video = inputs(family, model, video=True)
    image = sample(family, model, seed=2)
    both = sample(family, model, video=True, seed=3)
    mixed = collate(
        [{**image, "input_ids": torch.cat([image["input_ids"], both["input_ids"]])}]
    )  # image pixels, but video placeholders without video pixels
    want = twin(**mixed).logits
    handle = visprune.apply(model, "uniform", 2)
    model(**video)
    assert {s.kind for s in handle.selections} == {"video"}
    out = model(**mixed)
    assert {s.kind for s in handle.selections} == {"image"}
    kept = handle.selections
    reference = visprune.apply(twin, "uniform", 2)
    torch.testing.assert_close(out.logits, twin(**mixed).logits, atol=1e-5, rtol=1e-5)
    assert [s.kept.tolist() for s in reference.selections] == [s.kept.tolist() for s in kept]
    reference.remove()
    assert not torch.equal(out.logits, want)  # the image was pruned


# ---------------------------------------------------------- inputs_embeds with pixel values
@pytest.mark.parametrize(("family", "video"), KINDS)
@pytest.mark.parametrize("method", METHODS)
def test_inputs_embeds_with_pixels_prune_as_input_ids_do(family, video, method):
    """transformers finds the placeholders of ``inputs_embeds`` by comparing each embedding with
    the placeholder's; visprune finds them the same way and prunes as with ``input_ids``: the
    same selections, and the same logits (Qwen-VL computes other positions without
    ``input_ids``, unpatched too: there ``keepall`` equals the unpatched embeddings route)."""
    model, twin = tiny(family), tiny(family)
    data = inputs(family, model, video=video, batch=2)
    by_embeds = dict(data)
    by_embeds["inputs_embeds"] = twin.get_input_embeddings()(by_embeds.pop("input_ids"))
    unpatched = twin(**by_embeds).logits
    reference = applied(twin, method)
    want = twin(**data).logits
    handle = applied(model, method)
    got = model(**by_embeds).logits
    if family not in QWEN:
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert len(handle.selections) == len(reference.selections) > 0
    for mine, theirs in zip(handle.selections, reference.selections, strict=True):
        assert torch.equal(mine.kept, theirs.kept)
        assert torch.equal(mine.positions, theirs.positions)
    if method == "keepall":
        torch.testing.assert_close(got, unpatched, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["llava", "llava_next", "qwen2_5_vl", "internvl"])
def test_generate_from_inputs_embeds_with_pixels(family):
    """``generate(inputs_embeds=..., pixel values)``: ``keepall`` generates as the unpatched
    model does, and a pruning method prunes every image of the batch."""
    model, twin = tiny(family), tiny(family)
    data = inputs(family, model, batch=2)
    data["inputs_embeds"] = twin.get_input_embeddings()(data.pop("input_ids"))
    want = twin.generate(**data, **GENERATE)
    visprune.apply(model, "keepall")
    assert torch.equal(model.generate(**data, **GENERATE), want)
    handle = visprune.apply(model, "divprune", 0.5)
    model.generate(**data, **GENERATE)
    assert len(handle.selections) == 2
    assert all(len(s.kept) < s.n for s in handle.selections)


# ------------------------------------------------- encoder outputs handed in by the caller
def needs_encoder_outputs(model):
    if "mm_encoder_outputs" not in inspect.signature(type(model).forward).parameters:
        pytest.skip("this transformers release has no mm_encoder_outputs")


def test_encoder_outputs_of_mixed_origin_raise():
    """One kind recorded by visprune, the other computed before ``apply``: refused."""
    family = "qwen2_5_vl"
    model = tiny(family)
    needs_encoder_outputs(model)
    images = inputs(family, model)
    videos = inputs(family, model, video=True)
    early = model.model.get_video_features(videos["pixel_values_videos"], videos["video_grid_thw"])
    visprune.apply(model, "divprune", 0.5)
    late = model.model.get_image_features(images["pixel_values"], images["image_grid_thw"])
    ids = torch.cat([images["input_ids"], videos["input_ids"]], dim=1)
    types = torch.cat([images["mm_token_type_ids"], videos["mm_token_type_ids"]], dim=1)
    with pytest.raises(PruningNotApplied, match="mm_encoder_outputs must be computed"):
        model(
            input_ids=ids,
            mm_token_type_ids=types,
            image_grid_thw=images["image_grid_thw"],
            video_grid_thw=videos["video_grid_thw"],
            mm_encoder_outputs={"image": late, "video": early},
        )


@pytest.mark.parametrize("method", METHODS)
def test_text_call_with_empty_encoder_outputs_runs_as_the_unpatched_model(method):
    model, twin = tiny("llava"), tiny("llava")
    needs_encoder_outputs(model)
    data = collate([sample("llava", model, images=0, seed=3)])
    want = twin(**data, mm_encoder_outputs={"image": None}).logits
    handle = applied(model, method)
    assert torch.equal(model(**data, mm_encoder_outputs={"image": None}).logits, want)
    assert handle.selections == []


# ------------------------------------------------------ encoder calls outside a forward
@pytest.mark.parametrize(("family", "video"), KINDS)
def test_encoder_features_as_tuples_pass_through(family, video):
    model, twin = tiny(family), tiny(family)
    data = inputs(family, model, video=video)
    kind = "video" if video else "image"
    args = {
        key: data[key]
        for key in ("pixel_values", "pixel_values_videos", "image_sizes", f"{kind}_grid_thw")
        if key in data
    }
    want = getattr(twin.model, f"get_{kind}_features")(**args, return_dict=False)
    handle = visprune.apply(model, "divprune", 0.5)
    got = getattr(model.model, f"get_{kind}_features")(**args, return_dict=False)
    assert isinstance(got, tuple)
    for mine, theirs in zip(got, want, strict=True):
        if isinstance(theirs, torch.Tensor):
            assert torch.equal(mine, theirs)
    model(**data)  # a pruned call afterwards still prunes
    assert len(handle.selections) > 0


# ------------------------------------------------------------------- supported heads only
def test_apply_refuses_a_head_it_does_not_support():
    from transformers import Gemma3ForSequenceClassification

    model = tiny("gemma3")
    config = model.config
    config.num_labels = 2
    classifier = Gemma3ForSequenceClassification(config).eval()
    with pytest.raises(ValueError, match="Gemma3ForConditionalGeneration") as error:
        visprune.apply(classifier, "divprune", 0.5)
    assert "Gemma3ForSequenceClassification" in str(error.value)
    assert "_loss_function" not in classifier.__dict__
    assert not classifier.model._forward_pre_hooks
