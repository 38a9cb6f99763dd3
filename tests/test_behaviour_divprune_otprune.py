"""What DivPrune and OTPrune pick, against slow float64 references, and their edge cases.

The references live in :mod:`method_references`.
"""

from __future__ import annotations

import pytest
import torch

import visprune
from conftest import assert_valid_indices, make_tokens
from method_references import PROBLEM_IDS, PROBLEMS, ref_divprune, ref_otprune
from visprune.functional.otprune import column_normalise


@pytest.mark.parametrize(("n", "d", "k", "seed"), PROBLEMS, ids=PROBLEM_IDS)
def test_divprune_matches_reference(n, d, k, seed):
    """DivPrune = max-min cosine diversity from the most isolated token."""
    tokens = make_tokens((n, d), seed=seed)
    assert visprune.select("divprune", tokens, k).tolist() == ref_divprune(tokens, k)


@pytest.mark.parametrize(("n", "d", "k", "seed"), PROBLEMS, ids=PROBLEM_IDS)
@pytest.mark.parametrize("gamma", [0.01, 1.0])
def test_otprune_matches_reference(n, d, k, seed, gamma):
    """OTPrune = greedy ``log det (I + γ S Sᵀ)_A`` on column-normalised tokens."""
    tokens = make_tokens((n, d), seed=seed)
    kept = visprune.select("otprune", tokens, k, gamma=gamma)
    assert kept.tolist() == ref_otprune(tokens, k, gamma)


def test_divprune_duplicates_give_distinct_indices():
    """With exact duplicate rows, ``k`` distinct indices come back, covering every distinct row."""
    distinct = make_tokens((4, 8), seed=3)
    tokens = distinct.repeat(5, 1)  # 20 rows, each distinct row 5 times
    kept = visprune.select("divprune", tokens, 8)
    assert_valid_indices(kept, 20, 8)
    assert {i % 4 for i in kept.tolist()} == {0, 1, 2, 3}


def test_divprune_first_pick_is_the_most_isolated():
    """A token far from all others is always kept, even with ``k = 1``."""
    tokens = make_tokens((30, 6), seed=4).abs()  # all in one orthant
    tokens[17] = -tokens[17]  # the only one in the opposite orthant
    assert visprune.select("divprune", tokens, 1).tolist() == [17]


def test_otprune_zero_feature_column_is_harmless():
    """A feature column of zeros stays zero (no NaN) and changes no pick."""
    tokens = make_tokens((40, 10), seed=8)
    tokens[:, 3] = 0.0
    normalised = column_normalise(tokens.unsqueeze(0))
    assert bool(torch.isfinite(normalised).all())
    assert bool((normalised[..., 3] == 0).all())
    kept = visprune.select("otprune", tokens, 9)
    assert_valid_indices(kept, 40, 9)
    without = torch.cat([tokens[:, :3], tokens[:, 4:]], dim=1)
    assert torch.equal(kept, visprune.select("otprune", without, 9))


def test_otprune_all_zero_tokens():
    """All-zero tokens: every gain ties, so the lowest indices are kept (no NaN)."""
    assert visprune.select("otprune", torch.zeros(12, 5), 4).tolist() == [0, 1, 2, 3]


def test_otprune_duplicates_give_distinct_indices():
    """Exact duplicates still give ``k`` distinct indices."""
    tokens = make_tokens((3, 6), seed=5).repeat(6, 1)
    assert_valid_indices(visprune.select("otprune", tokens, 10), 18, 10)


def test_otprune_caches_rows_across_blocks():
    """More picks than one cached block of kernel rows (64) still match the reference greedy."""
    tokens = make_tokens((90, 8), seed=9)
    kept = visprune.select("otprune", tokens, 70, gamma=1.0)
    assert kept.tolist() == ref_otprune(tokens, 70, 1.0)
