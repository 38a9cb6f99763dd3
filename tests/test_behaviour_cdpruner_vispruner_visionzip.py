"""What CDPruner, VisPruner and VisionZip pick, against slow float64 references.

The references (:mod:`method_references`) follow the method pages; the published splits too.
"""

from __future__ import annotations

import pytest
import torch

import visprune
from conftest import make_tokens
from method_references import ref_cdpruner, ref_visionzip, ref_vispruner


@pytest.mark.parametrize(("n", "d", "k", "seed"), [(20, 8, 5, 0), (33, 16, 9, 1), (12, 30, 6, 2)])
def test_cdpruner_matches_reference(n, d, k, seed):
    """Text in the tokens' own space: relevance of the tokens to the prompt rows."""
    tokens = make_tokens((n, d), seed=seed)
    text = make_tokens((4, d), seed=seed + 50)
    kept = visprune.select("cdpruner", tokens, k, text=text)
    assert kept.tolist() == ref_cdpruner(tokens, tokens, text, k)


def test_cdpruner_clip_embeddings_give_the_published_core():
    """Ready CLIP embeddings: the functional core on the published layout, per image."""
    tokens = make_tokens((3, 40, 16), seed=4)
    embeds = make_tokens((3, 40, 12), seed=5)
    text = make_tokens((6, 12), seed=6)
    kept = visprune.select("cdpruner", tokens, 8, image_embeds=embeds, text_embeds=text)
    for item in range(3):
        want = visprune.functional.cdpruner(
            tokens[item : item + 1], embeds[item : item + 1], text, 8
        )
        assert torch.equal(kept[item], want[0])
        assert kept[item].tolist() == ref_cdpruner(tokens[item], embeds[item], text, 8)
    single = visprune.select("cdpruner", tokens[1], 8, image_embeds=embeds[1], text_embeds=text)
    assert torch.equal(single, kept[1])


def test_cdpruner_without_text_is_the_similarity_dpp():
    """An empty prompt tail, or relevance that is the same for every token, gives r = 1: the
    greedy MAP of the similarity kernel alone (the published code divides by zero there)."""
    from visprune.functional.cdpruner import conditional_dpp

    tokens = make_tokens((25, 10), seed=8)
    empty = visprune.select("cdpruner", tokens, 6, text=torch.zeros(0, 10))
    flat = torch.ones(25, 4)  # every patch equally relevant
    constant = visprune.select(
        "cdpruner", tokens, 6, image_embeds=flat, text_embeds=make_tokens((3, 4))
    )
    unit = tokens / tokens.norm(dim=-1, keepdim=True)
    similarity = (unit @ unit.T)[None]
    want = conditional_dpp(similarity, torch.ones(1, 25), 6)[0].sort().values
    assert torch.equal(empty, want) and torch.equal(constant, want)


def test_cdpruner_clip_embeddings_need_both_halves():
    tokens = make_tokens((10, 4))
    with pytest.raises(ValueError, match="image_embeds and text_embeds together"):
        visprune.select("cdpruner", tokens, 3, image_embeds=make_tokens((10, 5)))
    with pytest.raises(ValueError, match=r"text_embeds must be \(M, 5\)"):
        visprune.select(
            "cdpruner",
            tokens,
            3,
            image_embeds=make_tokens((10, 5)),
            text_embeds=make_tokens((2, 4)),
        )


@pytest.mark.parametrize(
    ("n", "d", "k", "ratio"), [(40, 8, 10, 0.5), (64, 16, 12, 0.25), (21, 6, 9, 0.0)]
)
def test_vispruner_matches_reference(n, d, k, ratio):
    tokens = make_tokens((n, d), seed=n)
    attention = make_tokens((3, n), seed=n + 1).softmax(-1)
    kept = visprune.select("vispruner", tokens, k, cls_attention=attention, important_ratio=ratio)
    assert kept.tolist() == ref_vispruner(tokens, attention, k, ratio)


def test_vispruner_ratio_one_is_top_attention():
    tokens = make_tokens((30, 8), seed=2)
    attention = make_tokens((30,), seed=3).softmax(-1)
    kept = visprune.select("vispruner", tokens, 7, cls_attention=attention, important_ratio=1.0)
    assert kept.tolist() == sorted(attention.topk(7).indices.tolist())


def test_vispruner_bad_attention_raises():
    tokens = make_tokens((30, 8))
    with pytest.raises(ValueError, match="cls_attention covers 29 tokens"):
        visprune.select("vispruner", tokens, 7, cls_attention=torch.rand(2, 29))
    with pytest.raises(ValueError, match="non-finite"):
        visprune.select("vispruner", tokens, 7, cls_attention=torch.full((30,), float("nan")))
    with pytest.raises(ValueError, match=r"important_ratio must be in \[0, 1\]"):
        visprune.get_method("vispruner", important_ratio=1.5)


@pytest.mark.parametrize(("n", "k", "ratio"), [(50, 12, 10 / 64), (36, 9, 0.34), (20, 3, 0.0)])
def test_visionzip_matches_reference(n, k, ratio):
    d = 12
    tokens = make_tokens((n, d), seed=n)
    attention = make_tokens((2, n), seed=n + 1).softmax(-1)
    keys = make_tokens((n, 5), seed=n + 2)
    cls = make_tokens((d,), seed=n + 3)
    method = visprune.VisionZip(budget=k, contextual_ratio=ratio)
    ctx = visprune.Context(cls_attention=attention, vision_keys=keys, cls_state=cls)
    kept, merged = method.reduce(tokens, None, ctx)
    want_kept, want_merged = ref_visionzip(tokens, attention, keys, cls, k, ratio)
    assert kept.tolist() == want_kept
    torch.testing.assert_close(merged.double(), want_merged, rtol=1e-5, atol=1e-5)


def test_visionzip_published_split():
    """64 -> 53 patches + CLS (54 dominant) + 10 contextual; 128 -> 108 + 20; 192 -> 162 + 30."""
    method = visprune.VisionZip()
    assert method.split(64, with_cls=True) == (53, 11)
    assert method.split(128, with_cls=True) == (107, 21)
    assert method.split(192, with_cls=True) == (161, 31)
    assert method.split(64, with_cls=False) == (54, 10)
