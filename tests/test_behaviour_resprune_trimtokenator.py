"""What ResPrune and TrimTokenator pick, against slow float64 references, and their edge cases.

The references live in :mod:`method_references`.
"""

from __future__ import annotations

import pytest
import torch

import visprune
from conftest import make_tokens
from method_references import PROBLEM_IDS, PROBLEMS, ref_alignment, ref_resprune, ref_trimtokenator


@pytest.mark.parametrize(("n", "d", "k", "seed"), PROBLEMS, ids=PROBLEM_IDS)
def test_resprune_matches_reference(n, d, k, seed):
    """ResPrune = greedy residual energy weighted by ``r̃^alpha``, with and without text."""
    tokens = make_tokens((n, d), seed=seed)
    text = make_tokens((6, d), seed=seed + 100)
    assert visprune.select("resprune", tokens, k).tolist() == ref_resprune(tokens, k)
    for alpha in (0.5, 2.0):
        kept = visprune.select("resprune", tokens, k, text=text, alpha=alpha)
        assert kept.tolist() == ref_resprune(tokens, k, text, alpha)


@pytest.mark.parametrize(("n", "d", "k", "seed"), PROBLEMS, ids=PROBLEM_IDS)
def test_trimtokenator_matches_reference(n, d, k, seed):
    """TrimTokenator = alignment cut at the mean, then RepMax on the aligned set."""
    tokens = make_tokens((n, d), seed=seed)
    text = make_tokens((6, d), seed=seed + 100)
    assert visprune.select("trimtokenator", tokens, k).tolist() == ref_trimtokenator(tokens, k)
    kept = visprune.select("trimtokenator", tokens, k, text=text)
    assert kept.tolist() == ref_trimtokenator(tokens, k, text)


def test_resprune_alpha_zero_ignores_text():
    """``alpha = 0`` disables the text term: same picks as without text, or with an empty tail."""
    tokens = make_tokens((50, 16), seed=17)
    text = make_tokens((5, 16), seed=18)
    plain = visprune.select("resprune", tokens, 10)
    assert torch.equal(visprune.select("resprune", tokens, 10, text=text, alpha=0.0), plain)
    assert torch.equal(visprune.select("resprune", tokens, 10, text=torch.zeros(0, 16)), plain)
    assert not torch.equal(visprune.select("resprune", tokens, 10, text=text), plain)


def test_resprune_first_pick_is_largest_norm_without_text():
    """Without text, ``g = 1`` and the first pick is the token of largest norm."""
    tokens = make_tokens((30, 8), seed=19)
    tokens[11] *= 10
    assert visprune.select("resprune", tokens, 1).tolist() == [11]


@pytest.mark.parametrize("d", [16, 64], ids=["feature-form", "gram-form"])
def test_resprune_rank_deficient_fills_by_norm(d):
    """40 tokens spanning 3 dimensions, k = 10: 3 spanning picks, then descending norm."""
    generator = torch.Generator().manual_seed(20)
    basis = torch.randn(3, d, generator=generator)
    tokens = torch.randn(40, 3, generator=generator) @ basis
    tokens = tokens * torch.linspace(0.5, 2.0, 40)[torch.randperm(40, generator=generator), None]
    kept = visprune.select("resprune", tokens, 10).tolist()

    reference = ref_resprune(tokens, 10)
    assert kept == reference
    norms = tokens.double().norm(dim=-1)
    spanning = ref_resprune(tokens, 3)
    assert set(spanning) <= set(kept)
    assert torch.linalg.matrix_rank(tokens[spanning].double(), rtol=1e-4) == 3
    rest = [i for i in range(40) if i not in spanning]
    by_norm = sorted(rest, key=lambda i: -float(norms[i]))[:7]
    assert set(kept) == set(spanning) | set(by_norm)


def test_resprune_exact_rank_is_spanned_before_filling():
    """Whatever the budget, the kept set spans all tokens when ``k`` >= the rank."""
    generator = torch.Generator().manual_seed(21)
    tokens = torch.randn(60, 5, generator=generator) @ torch.randn(5, 32, generator=generator)
    for k in (5, 6, 20):
        kept = visprune.select("resprune", tokens, k)
        assert torch.linalg.matrix_rank(tokens[kept].double(), rtol=1e-4) == 5


def test_trimtokenator_keeps_only_aligned_tokens():
    """With at least ``k`` aligned tokens (``a_i >= mean a``), every pick is aligned."""
    tokens = make_tokens((60, 16), seed=22)
    text = make_tokens((4, 16), seed=23)
    a = ref_alignment(tokens, text)
    aligned = {i for i in range(60) if a[i] >= a.mean()}
    assert 10 <= len(aligned) < 60
    kept = visprune.select("trimtokenator", tokens, 10, text=text)
    assert set(kept.tolist()) <= aligned
    unconditioned = visprune.select("trimtokenator", tokens, 10)
    assert not set(unconditioned.tolist()) <= aligned


def test_trimtokenator_too_few_aligned_takes_top_k():
    """With fewer than ``k`` tokens above the mean alignment, the top-k by alignment are kept."""
    direction = torch.zeros(8)
    direction[0] = 1.0
    tokens = -direction.repeat(12, 1) + 0.01 * make_tokens((12, 8), seed=24)
    tokens[5] = direction  # the only token aligned with the prompt
    a = ref_alignment(tokens, direction[None])
    assert int((a >= a.mean()).sum()) == 1
    kept = visprune.select("trimtokenator", tokens, 4, text=direction[None])
    assert kept.tolist() == sorted(a.topk(4).indices.tolist())


def test_trimtokenator_without_text_equals_empty_text():
    """No text, or an empty prompt tail, aligns every token: RepMax alone."""
    tokens = make_tokens((40, 8), seed=25)
    plain = visprune.select("trimtokenator", tokens, 7)
    assert torch.equal(visprune.select("trimtokenator", tokens, 7, text=torch.zeros(0, 8)), plain)
    mixed = visprune.select(
        "trimtokenator", tokens.expand(2, 40, 8), 7, text=[torch.zeros(0, 8), tokens[:3]]
    )
    assert torch.equal(mixed[0], plain)
