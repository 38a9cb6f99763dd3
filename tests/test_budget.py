"""Property tests: the budget rules, and the output contract on arbitrary token matrices."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import (
    METHOD_NAMES,
    NO_BUDGET,
    assert_valid,
    expected_k,
    needs_text,
    run,
    uses_text,
)
from visprune.methods import resolve_budget
from visprune.registry import METHODS

FAST = settings(max_examples=25, deadline=None)
counts = st.integers(min_value=1, max_value=10_000)
fractions = st.floats(min_value=0.0, max_value=1.0, exclude_min=True, allow_nan=False)


# --- resolve_budget ------------------------------------------------------------------------------


@FAST
@given(budget=st.integers(min_value=1, max_value=10**12), n=counts)
def test_int_budget_is_a_count_capped_at_n(budget, n):
    """An int keeps ``min(budget, n)`` tokens."""
    assert resolve_budget(budget, n) == min(budget, n)


@FAST
@given(fraction=fractions, n=counts)
def test_float_budget_is_a_rounded_fraction(fraction, n):
    """A float keeps ``max(1, round(fraction * n))`` tokens, never more than ``n``."""
    k = resolve_budget(fraction, n)
    assert k == min(n, max(1, round(fraction * n)))
    assert 1 <= k <= n


@FAST
@given(a=fractions, b=fractions, n=counts)
def test_float_budget_is_monotone(a, b, n):
    """A larger fraction never keeps fewer tokens."""
    low, high = sorted((a, b))
    assert resolve_budget(low, n) <= resolve_budget(high, n)


@FAST
@given(n=counts)
def test_full_fraction_and_large_counts_keep_all(n):
    """``1.0``, ``n`` and anything above ``n`` keep all ``n`` tokens."""
    assert resolve_budget(1.0, n) == n
    assert resolve_budget(n, n) == n
    assert resolve_budget(n + 1, n) == n


@pytest.mark.parametrize(
    ("budget", "n", "k"),
    [
        (0.098, 576, 56),  # 56.448
        (0.111, 576, 64),  # 63.936
        (0.5, 5, 2),  # 2.5 -> 2 (half to even)
        (0.5, 7, 4),  # 3.5 -> 4 (half to even)
        (0.125, 20, 2),  # 2.5 -> 2
        (0.375, 20, 8),  # 7.5 -> 8
        (1e-9, 576, 1),  # never fewer than one token
        (0.001, 100, 1),
        (64, 576, 64),
        (1, 1, 1),
    ],
)
def test_budget_examples(budget, n, k):
    """Worked examples from docs/methods/index.md, with Python's half-to-even rounding."""
    assert resolve_budget(budget, n) == k


@pytest.mark.parametrize(
    ("budget", "n", "k"),
    [
        (np.int64(5), 10, 5),
        (np.float32(0.5), 10, 5),
        (np.float64(0.25), 8, 2),
        (Fraction(1, 4), 8, 2),
    ],
    ids=["np.int64", "np.float32", "np.float64", "Fraction"],
)
def test_numeric_types_are_accepted(budget, n, k):
    """numpy scalars and other real numbers follow the int / float rules."""
    assert resolve_budget(budget, n) == k


@pytest.mark.parametrize(
    ("budget", "shown"),
    [
        (0, "0"),
        (-3, "-3"),
        (0.0, "0.0"),
        (-0.5, "-0.5"),
        (float("nan"), "NaN"),
        (1.5, "1.5"),
        (576.0, "576.0"),
        (float("-inf"), "-inf"),
        ("64", "'64'"),
        (True, "True"),
        ([4], r"\[4\]"),
        (torch.tensor(4), r"tensor\(4\)"),
    ],
    ids=repr,
)
def test_bad_budgets_raise_naming_the_value(budget, shown):
    """Zero, negatives, NaN, fractions above 1 and non-numbers raise ``ValueError`` naming it."""
    with pytest.raises(ValueError, match=shown):
        resolve_budget(budget, 100, "divprune")


def test_missing_budget_says_so():
    """``None`` means no budget was given; the message says how to give one."""
    with pytest.raises(ValueError, match=r"divprune: no budget given.*budget="):
        resolve_budget(None, 100, "divprune")


def test_infinite_budget_raises_value_error():
    """``inf`` is a fraction above 1: a ``ValueError`` naming it (not an ``OverflowError``)."""
    with pytest.raises(ValueError, match="inf"):
        resolve_budget(float("inf"), 100, "divprune")


@pytest.mark.parametrize(
    ("budget", "hint"),
    [
        (1.5, "pass an int such as budget=1 or budget=2"),
        (64.7, "pass an int such as budget=64 or budget=65"),
        (64.0, r"for 64 tokens pass an int \(budget=64\)"),
    ],
)
def test_a_float_above_one_gets_a_hint_that_fits_it(budget, hint):
    """A whole float means that count; a float with a fractional part is no count at all, so
    the hint offers the whole numbers around it."""
    with pytest.raises(ValueError, match=r"must be in \(0, 1\], got .*; .*" + hint):
        resolve_budget(budget, 100, "divprune")


@FAST
@given(budget=st.one_of(st.integers(max_value=0), st.floats(max_value=0.0)))
def test_non_positive_budgets_always_raise(budget):
    """Every budget ``<= 0`` (or NaN) raises ``ValueError`` naming the method."""
    with pytest.raises(ValueError, match="otprune"):
        resolve_budget(budget, 10, "otprune")


@FAST
@given(fraction=st.floats(min_value=1.0, exclude_min=True, allow_infinity=False))
def test_fractions_above_one_always_raise(fraction):
    """A finite float above 1 is not a count: it raises and suggests an int."""
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        resolve_budget(fraction, 10, "otprune")


# --- the method contract on arbitrary finite tokens ----------------------------------------------

values = st.one_of(
    st.floats(min_value=-1e4, max_value=1e4, width=32),
    st.sampled_from([0.0, 1.0, -1.0, 0.5]),  # exact duplicates and ties
)


@st.composite
def problems(draw, name: str):
    """Tokens ``(n, d)`` or ``(b, n, d)``, a budget and the text ``name`` can take."""
    batch = draw(st.sampled_from([None, 1, 3]))
    n = draw(st.integers(min_value=1, max_value=12))
    d = draw(st.integers(min_value=1, max_value=6))
    shape = (n, d) if batch is None else (batch, n, d)
    flat = draw(st.lists(values, min_size=math.prod(shape), max_size=math.prod(shape)))
    tokens = torch.tensor(flat, dtype=torch.float32).reshape(shape)
    budget = None
    if name not in NO_BUDGET:
        budget = draw(st.one_of(st.integers(min_value=1, max_value=15), fractions))
    extra = {}
    if uses_text(name):
        requires = needs_text(name)
        if requires or draw(st.booleans()):
            rows = draw(st.integers(min_value=0, max_value=4))
            free = requires and not METHODS[name].text_in_token_space
            width = draw(st.integers(min_value=1, max_value=8)) if free else d
            text = draw(st.lists(values, min_size=rows * width, max_size=rows * width))
            extra["text"] = torch.tensor(text, dtype=torch.float32).reshape(rows, width)
    return tokens, budget, extra


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_contract_on_arbitrary_tokens(name):
    """Any finite tokens give k unique ascending in-range int64 indices, deterministically."""

    @FAST
    @given(problem=problems(name))
    def check(problem):
        tokens, budget, extra = problem
        batch = None if tokens.dim() == 2 else tokens.shape[0]
        n = tokens.shape[-2]
        call = run  # budget left out for keepall; CLS attention or layer scores where needed
        kept = call(name, tokens, budget, **extra)
        assert_valid(kept, n, expected_k(name, budget, n), batch, tokens.device)
        assert torch.equal(kept, call(name, tokens, budget, **extra))
        if batch is not None:
            singles = [call(name, item, budget, **extra) for item in tokens]
            assert torch.equal(kept, torch.stack(singles))

    check()
