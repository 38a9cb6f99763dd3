"""Which tokens the in-LLM methods and the vision-tower scores choose, in a model.

Every expected pick here comes from a computation that never goes through visprune: an eager
twin of the model (the attention weights transformers itself computes, the hidden states it
returns, the keys its cache holds) and slow selection rules written out from the methods'
documented contracts. The images have 36 candidates and the budgets keep well below that, with
non-integer ``k * ratio``, so a wrong score, a wrong layer or a wrong schedule changes the picks.
"""

from __future__ import annotations

import copy
import functools

import pytest
import torch
from torch import Tensor
from transformers import LlavaForConditionalGeneration

import visprune
import visprune.functional as F
from tiny_vlms import IMG, PAD, SPECIAL, tiny
from visprune.methods.dart import DART
from visprune.methods.fastv import FastV

#: 84-px images: 6 x 6 CLIP patches, so 36 candidates per image.
SIDE, N = 84, 36
LAYERS = 4


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


@functools.cache
def base_config():
    return tiny("llava").config


def llava(attn: str = "sdpa", vision_layers: int = 2, side: int = SIDE):
    """The tiny LLaVA with larger images and a 4-layer language model; equal weights per call."""
    config = copy.deepcopy(base_config())
    config.vision_config.image_size = side
    config.vision_config.num_hidden_layers = vision_layers
    config.image_seq_length = (side // 14) ** 2
    config.text_config.num_hidden_layers = LAYERS
    config._attn_implementation = attn
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config).eval()
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = PAD
    return model


def prompt(prefix: int, suffix: int, seed: int, side: int = SIDE) -> dict:
    """One unpadded prompt: ``prefix`` text tokens, one image, ``suffix`` text tokens."""
    generator = torch.Generator().manual_seed(seed)
    text = torch.randint(1, 100, (prefix + suffix + 8,), generator=generator).tolist()
    text = [t for t in text if t not in SPECIAL][: prefix + suffix]
    n = (side // 14) ** 2
    ids = torch.tensor(text[:prefix] + [IMG] * n + text[prefix:])
    pixels = torch.randn(1, 3, side, side, generator=generator)
    return {
        "input_ids": ids[None],
        "attention_mask": torch.ones_like(ids)[None],
        "pixel_values": pixels,
    }


def batch(prompts: list[dict]) -> dict:
    """Prompts left-padded into one batch."""
    longest = max(p["input_ids"].shape[1] for p in prompts)
    ids = torch.full((len(prompts), longest), PAD)
    mask = torch.zeros_like(ids)
    for row, p in enumerate(prompts):
        length = p["input_ids"].shape[1]
        ids[row, longest - length :] = p["input_ids"][0]
        mask[row, longest - length :] = 1
    pixels = torch.cat([p["pixel_values"] for p in prompts])
    return {"input_ids": ids, "attention_mask": mask, "pixel_values": pixels}


def top_order(scores: Tensor) -> list[int]:
    """Indices of ``(n,)`` scores from the highest down; ties: lowest index first."""
    return sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))


def top(scores: Tensor, k: int) -> Tensor:
    """The ``k`` highest of ``(n,)`` scores (ties: lowest index), ascending."""
    return torch.tensor(sorted(top_order(scores)[:k]))


def record_contexts(monkeypatch, cls) -> list:
    """Every ``(tokens, k, ctx)`` that ``cls._select`` receives while the test runs."""
    seen = []
    original = cls._select

    def recording(self, tokens, k, ctx):
        seen.append((tokens.clone(), k, ctx))
        return original(self, tokens, k, ctx)

    monkeypatch.setattr(cls, "_select", recording)
    return seen


# ----------------------------------------------------------------------------------- FastV
@pytest.mark.parametrize("budget", [3, 7, 0.3])
def test_fastv_scores_are_the_eager_attention_row_of_the_last_prompt_token(monkeypatch, budget):
    """The scores FastV receives are the eager attention of the last prompt token at layer
    ``K - 1`` (averaged over heads, normalised over every key it sees, its own included), and it
    keeps their top ``k``: a left-padded batch of rows of different lengths."""
    layer = 2
    data = batch([prompt(2, 5, seed=1), prompt(5, 9, seed=2)])
    eager = llava("eager")
    attentions = eager(**data, output_attentions=True).attentions
    want_scores = attentions[layer - 1][:, :, -1].float().mean(1)  # (B, L)
    torch.testing.assert_close(want_scores.sum(-1), torch.ones(2))
    seen = record_contexts(monkeypatch, FastV)
    model = llava()
    with visprune.apply(model, "fastv", layer=layer, budget=budget) as handle:
        model(**data)
        records = handle.selections
    k = budget if isinstance(budget, int) else round(budget * N)
    # The batch's images select in one call: one row of scores per image.
    per_image = [(got_k, scores) for _, got_k, ctx in seen for scores in ctx.scores]
    assert len(records) == len(per_image) == 2
    for record, (got_k, scores) in zip(records, per_image, strict=True):
        want = want_scores[record.sample, record.candidates]
        assert got_k == k
        torch.testing.assert_close(scores.reshape(-1), want, atol=1e-6, rtol=1e-5)
        assert torch.equal(record.kept, top(want, k))


# -------------------------------------------------------------------------- layer by hand
def eager_causal(length: int, dtype: torch.dtype) -> Tensor:
    """``(1, 1, L, L)`` additive causal mask for eager attention."""
    mask = torch.full((length, length), torch.finfo(dtype).min, dtype=dtype).triu(1)
    return mask[None, None]


def layer_zero_input(twin, data: dict) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """The hidden states and rotary embedding that the twin's decoder layer 0 receives."""
    seen = {}

    def record(module, args, kwargs):
        seen["hidden"] = args[0] if args else kwargs["hidden_states"]
        seen["rotary"] = kwargs["position_embeddings"]

    hook = twin.model.language_model.layers[0].register_forward_pre_hook(record, with_kwargs=True)
    try:
        twin(**data)
    finally:
        hook.remove()
    return seen["hidden"], seen["rotary"]


def run_layer(layer, hidden: Tensor, rotary) -> tuple[Tensor, Tensor]:
    """One eager decoder layer on an unpadded row: its output and its attention weights."""
    weights = {}

    def record(module, args, output):
        weights["attention"] = output[1]

    hook = layer.self_attn.register_forward_hook(record)
    try:
        out = layer(
            hidden,
            attention_mask=eager_causal(hidden.shape[1], hidden.dtype),
            position_embeddings=rotary,
        )
    finally:
        hook.remove()
    out = out[0] if isinstance(out, tuple) else out
    return out, weights["attention"]


def pyramid_by_hand(twin, data: dict, boundaries: list[int], counts: list[int]) -> list[Tensor]:
    """PyramidDrop on one unpadded prompt, on the eager twin: at each boundary layer the image
    tokens still present that get the most attention from the last token *in that layer, on the
    tokens entering it*; returns the kept candidate indices after each boundary."""
    hidden, (cos, sin) = layer_zero_input(twin, data)
    ids = data["input_ids"][0]
    present = torch.arange(len(ids))  # positions of the unpruned prompt still in the sequence
    candidates = (ids == IMG).nonzero().squeeze(-1)
    kept = []
    for number, layer in enumerate(twin.model.language_model.layers):
        rotary = (cos[:, present], sin[:, present])
        if number in boundaries:
            _, attention = run_layer(layer, hidden, rotary)
            row = attention[0, :, -1].float().mean(0)  # (L',) over the tokens entering
            alive = [i for i, p in enumerate(present.tolist()) if ids[p] == IMG]
            picked = top(row[alive], counts[boundaries.index(number)])
            drop = set(alive) - {alive[i] for i in picked.tolist()}
            stay = torch.tensor([i for i in range(len(present)) if i not in drop])
            hidden, present = hidden[:, stay], present[stay]
            rotary = (cos[:, present], sin[:, present])
            at = {p: i for i, p in enumerate(candidates.tolist())}
            kept.append(torch.tensor([at[p] for p in present.tolist() if p in at]))
        hidden, _ = run_layer(layer, hidden, rotary)
    return kept


@pytest.mark.parametrize(
    ("budget", "ratio", "layers", "schedule"),
    [
        (0.35, 0.6, (1, 2, 3), [13, 8, 5]),  # 12.6 -> 13, 7.8 -> 8, 4.68 -> 5
        (11, 0.5, (1, 3), [11, 6]),  # 5.5 -> 6 (round half to even)
        (9, 0.3, (2, 3), [9, 3]),  # 2.7 -> 3
    ],
)
def test_pdrop_keeps_its_schedule_at_every_stage(budget, ratio, layers, schedule):
    """At every boundary the image keeps ``max(1, round(k_1 * ratio ** s))`` tokens (the
    schedule written out above), and they are the ones the last token attends to most in that
    boundary layer, computed on the eager twin layer by hand."""
    twin = llava("eager")
    model = llava()
    for seed, (prefix, suffix) in enumerate([(2, 5), (4, 3)], start=1):
        data = prompt(prefix, suffix, seed=seed)
        with visprune.apply(model, "pdrop", budget=budget, ratio=ratio, layers=layers) as handle:
            model(**data)
            (record,) = handle.selections
        assert [layer for layer, _ in record.stages] == list(layers)
        assert [len(kept) for _, kept in record.stages] == schedule
        want = pyramid_by_hand(twin, data, list(layers), schedule)
        for (_, got), expected in zip(record.stages, want, strict=True):
            assert torch.equal(got, expected)
        assert torch.equal(record.kept, want[-1])


# ------------------------------------------------------------------------------------ DART
def dart_by_hand(
    states: Tensor, norms: Tensor, image: Tensor, text: Tensor, k: int, p_img: int, p_txt: int
) -> Tensor:
    """DART's documented rule, slowly: the ``p_img`` image tokens and ``p_txt`` text tokens
    with the largest key norm are pivots (image pivots first, each group by descending norm,
    ties to the lowest position); the image pivots are kept; each pivot in turn claims its share
    of the remaining image tokens least cosine-similar to it (the first ``(k - p_img) mod P``
    pivots one more). Returns kept indices into ``image``, ascending.

    ``states`` ``(L, d)`` final-norm hidden states, ``norms`` ``(L,)`` key norms, ``image`` and
    ``text`` positions in the row.
    """
    image_pivots = [int(image[i]) for i in top_order(norms[image])[:p_img]]
    text_pivots = [int(text[i]) for i in top_order(norms[text])[:p_txt]]
    pivots = image_pivots + text_pivots
    rest, extra = divmod(k - len(image_pivots), len(pivots))
    pool = [int(p) for p in image if int(p) not in image_pivots]
    kept = list(image_pivots)
    for slot, pivot in enumerate(pivots):
        share = rest + (slot < extra)
        cosine = {
            p: float(states[p] @ states[pivot] / (states[p].norm() * states[pivot].norm()))
            for p in pool
        }
        claimed = sorted(pool, key=lambda p: (cosine[p], p))[:share]
        kept += claimed
        pool = [p for p in pool if p not in claimed]
    at = {int(p): i for i, p in enumerate(image)}
    return torch.tensor(sorted(at[p] for p in kept))


@pytest.mark.parametrize(("budget", "image_pivots", "text_pivots"), [(11, 2, 3), (8, 1, 4)])
def test_dart_text_pivots_claim_tokens_as_the_eager_layer_says(
    monkeypatch, budget, image_pivots, text_pivots
):
    """DART's picks equal the rule applied to the eager twin's own tensors: the key norms of
    layer ``K - 1`` (from its KV cache, after RoPE) and the final-norm hidden states entering
    layer ``K``; text pivots come strictly after the image, and each claims tokens."""
    layer = 2
    eager = llava("eager")
    model = llava()
    seen = record_contexts(monkeypatch, DART)
    for seed, (prefix, suffix) in enumerate([(3, 6), (6, 4)], start=1):
        data = prompt(prefix, suffix, seed=seed)
        out = eager(**data, output_hidden_states=True, use_cache=True)
        keys = out.past_key_values.layers[layer - 1].keys[0]  # (H_kv, L, hd)
        norms = keys.float().abs().sum(dim=(0, 2))  # (L,)
        states = eager.model.language_model.norm(out.hidden_states[layer])[0].float()
        ids = data["input_ids"][0]
        image = (ids == IMG).nonzero().squeeze(-1)
        text = torch.arange(int(image[-1]) + 1, len(ids))
        assert len(text) == suffix >= text_pivots
        params = {"image_pivots": image_pivots, "text_pivots": text_pivots}
        seen.clear()
        with visprune.apply(model, "dart", layer=layer, budget=budget, **params) as handle:
            model(**data)
            (record,) = handle.selections
        ((_, k, ctx),) = seen
        assert k == budget
        # What the method reads: the text tokens after the image, with their key norms.
        torch.testing.assert_close(ctx.text[0], states[text], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ctx.text_scores[0], norms[text], atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(ctx.scores.reshape(-1), norms[image], atol=1e-4, rtol=1e-5)
        want = dart_by_hand(states, norms, image, text, budget, image_pivots, text_pivots)
        assert len(want) == budget
        # The text pivots claim: without them the picks differ.
        alone = dart_by_hand(states, norms, image, text[:0], budget, image_pivots, 0)
        assert not torch.equal(alone, want)
        assert torch.equal(record.kept, want)


# ------------------------------------------------------------------ vision-tower scores
@pytest.mark.parametrize("chosen", [1, 3])
@pytest.mark.parametrize("method", ["vispruner", "visionzip"])
def test_positive_vision_feature_layer_scores_with_that_layer(method, chosen):
    """With ``vision_feature_layer`` 1 or 3 (the last of a 3-layer tower) the CLS attention,
    keys and hidden states come from the layer whose output is ``hidden_states[chosen]``: the
    picks equal the cores run on the eager tower's own attention weights there."""
    model = llava(vision_layers=3, side=56)
    eager = llava("eager", vision_layers=3, side=56)
    for each in (model, eager):
        each.config.vision_feature_layer = chosen
    data = batch([prompt(2, 4, seed=1, side=56), prompt(3, 4, seed=2, side=56)])
    zip_params = {"contextual_ratio": 0.34}
    k = 5
    with visprune.apply(model, method, k, **(zip_params if method == "visionzip" else {})) as h:
        model(**data)
        records = h.selections
    tower = eager.model.vision_tower
    out = tower(data["pixel_values"], output_attentions=True, output_hidden_states=True)
    layer = getattr(tower, "vision_model", tower).encoder.layers[chosen - 1]
    attention = out.attentions[chosen - 1][:, :, 0]  # (B, H, T): the CLS query's row
    hidden = out.hidden_states[chosen]  # (B, T, D)
    keys = layer.self_attn.k_proj(layer.layer_norm1(out.hidden_states[chosen - 1]))
    keys = keys.view(*keys.shape[:2], layer.self_attn.num_heads, -1).mean(dim=2)
    assert len(records) == 2
    for image, record in enumerate(records):
        if method == "vispruner":
            want = F.vispruner(
                hidden[image : image + 1, 1:], attention[image : image + 1, :, 1:], k
            )
            want = want[0]
        else:
            patches, new = visprune.VisionZip(**zip_params).split(k, with_cls=True)
            indices, _ = F.visionzip(
                attention[image : image + 1],
                hidden[image : image + 1],
                keys[image : image + 1],
                patches + 1,
                new - 1,
            )
            want = indices[0, 1:] - 1
        assert torch.equal(record.kept, want)
