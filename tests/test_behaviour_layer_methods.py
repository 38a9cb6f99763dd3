"""What FastV, PyramidDrop and DART pick from given scores.

These methods prune inside the language model; here their selection runs on scores handed in.
"""

from __future__ import annotations

import pytest
import torch

import visprune


def test_fastv_and_pdrop_keep_the_highest_scores_ties_to_lowest():
    tokens = torch.randn(10, 4, generator=torch.Generator().manual_seed(0))
    scores = torch.tensor([0.1, 0.9, 0.5, 0.9, 0.0, 0.5, 0.3, 0.5, 0.2, 0.05])
    for name in ("fastv", "pdrop"):
        kept = visprune.select(name, tokens, 4, scores=scores)
        assert kept.tolist() == [1, 2, 3, 5]  # 0.9, 0.9, then the first two 0.5s


def test_pdrop_schedule_and_default_boundaries():
    method = visprune.get_method("pdrop", budget=288)
    assert [method.keep_count(576, step) for step in range(3)] == [288, 144, 72]
    assert method.check_layers(32) == [8, 16, 24]
    assert method.check_layers(3) == [1, 2]  # small models: fewer distinct boundaries
    assert visprune.get_method("pdrop", budget=0.5, ratio=1.0).keep_count(100, 2) == 50
    with pytest.raises(ValueError, match="ratio"):
        visprune.get_method("pdrop", budget=2, ratio=1.5)
    with pytest.raises(ValueError, match="strictly ascending"):
        visprune.get_method("pdrop", budget=2, layers=(4, 2)).check_layers(8)


def test_dart_keeps_exactly_k_with_its_image_pivots():
    generator = torch.Generator().manual_seed(3)
    tokens, text = torch.randn(50, 8, generator=generator), torch.randn(7, 8, generator=generator)
    norms, text_norms = torch.rand(50, generator=generator), torch.rand(7, generator=generator)
    for k in (4, 5, 13, 49):
        kept = visprune.select("dart", tokens, k, scores=norms, text=text, text_scores=text_norms)
        assert len(kept) == k == len(set(kept.tolist()))
        assert set(norms.topk(min(4, k)).indices.tolist()) <= set(kept.tolist())
    alone = visprune.select("dart", tokens, 12, scores=norms)  # no text: image pivots only
    assert len(alone) == 12


def test_dart_method_equals_the_published_core_when_the_shares_divide():
    """With ``(k - p) % (p_img + p_txt) == 0`` and pivots that the published set order visits
    by descending norm (small ascending positions, norms falling with position), the method and
    the parity-tested core keep the same tokens."""
    generator = torch.Generator().manual_seed(5)
    image, prefix, suffix, d = 20, 2, 6, 16
    states = torch.randn(1, prefix + image + suffix, d, generator=generator)
    norms = torch.linspace(3.0, 1.0, prefix + image + suffix)  # falling with position
    keys = norms.view(1, 1, -1, 1)  # L1 norm of one value per token: the norm itself
    k = 4 + 8 * 2
    core = visprune.functional.dart(states, keys, prefix, image, k)[0] - prefix
    method = visprune.select(
        "dart",
        states[0, prefix : prefix + image],
        k,
        scores=norms[prefix : prefix + image],
        text=states[0, prefix + image :],
        text_scores=norms[prefix + image :],
    )
    assert torch.equal(method, core)
