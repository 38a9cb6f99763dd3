"""What uniform and random pick: rounded linspace, per-seed draws, token values ignored."""

from __future__ import annotations

from fractions import Fraction

import torch

import visprune
from conftest import assert_valid_indices, make_tokens


def test_uniform_is_rounded_linspace_with_halves_to_even():
    """Picks are ``round(i (n - 1) / (k - 1))`` with exact halves rounded to even, as documented
    (Python's ``round`` of a ``Fraction`` is exact and rounds half to even)."""
    cases = [(n, k) for n in range(2, 61) for k in range(1, n)] + [(576, 56), (576, 64), (2304, 7)]
    for n, k in cases:
        kept = visprune.select("uniform", torch.zeros(n, 1), k)
        assert_valid_indices(kept, n, k)
        for i, pick in enumerate(kept.tolist()):
            exact = Fraction(i * (n - 1), k - 1) if k > 1 else Fraction(0)
            assert pick == round(exact), (n, k, i)


def test_uniform_exact_halves():
    assert visprune.select("uniform", torch.zeros(6, 1), 5).tolist() == [0, 1, 2, 4, 5]  # 2.5 -> 2
    assert visprune.select("uniform", torch.zeros(28, 1), 27)[13].item() == 14  # 13.5 -> 14


def test_uniform_keeps_first_and_last():
    """With ``k >= 2`` the first and the last token are kept; ``k = 1`` keeps token 0."""
    for n, k in [(576, 64), (10, 2), (37, 5)]:
        kept = visprune.select("uniform", make_tokens((n, 3)), k)
        assert kept[0] == 0 and kept[-1] == n - 1
    assert visprune.select("uniform", make_tokens((10, 3)), 1).tolist() == [0]


def test_uniform_and_random_ignore_token_values():
    """Index-based baselines give the same picks for any tokens of the same shape."""
    for name in ("uniform", "random"):
        first = visprune.select(name, make_tokens((50, 8), seed=1), 9)
        second = visprune.select(name, make_tokens((50, 8), seed=2), 9)
        assert torch.equal(first, second)


def test_random_is_reproducible_per_seed():
    """The same seed gives the same picks, call after call and instance after instance."""
    tokens = make_tokens((100, 4))
    for seed in (0, 1, 12345):
        first = visprune.select("random", tokens, 10, seed=seed)
        again = visprune.get_method("random", budget=10, seed=seed).select(tokens)
        assert torch.equal(first, again)


def test_random_differs_across_seeds():
    """Different seeds give different subsets."""
    tokens = make_tokens((100, 4))
    subsets = {tuple(visprune.select("random", tokens, 10, seed=s).tolist()) for s in range(20)}
    assert len(subsets) == 20


def test_random_is_the_same_for_every_batch_item():
    """Each item draws from a fresh generator with the seed: all rows equal the single result."""
    batch = make_tokens((4, 30, 5))
    kept = visprune.select("random", batch, 7, seed=3)
    single = visprune.select("random", batch[0], 7, seed=3)
    assert torch.equal(kept, single.expand(4, 7))


def test_random_is_roughly_uniform():
    """Over many seeds every index is kept about ``k / n`` of the time."""
    n, k, trials = 10, 3, 400
    counts = torch.zeros(n)
    for seed in range(trials):
        counts[visprune.select("random", torch.zeros(n, 1), k, seed=seed)] += 1
    frequency = counts / trials
    assert bool(((frequency - k / n).abs() < 0.1).all()), frequency


def test_random_does_not_touch_global_rng():
    """Selection uses its own generator: the global torch RNG stream is unchanged."""
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    visprune.select("random", make_tokens((50, 4)), 5, seed=7)
    assert torch.equal(torch.rand(3), expected)
