"""What ReDiPrune picks and how it pools its text query, against slow float64 references.

The references live in :mod:`method_references`.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import visprune
from conftest import make_tokens
from method_references import (
    PROBLEM_IDS,
    PROBLEMS,
    _argmax,
    _unit,
    ref_match_width,
    ref_pool,
    ref_rediprune,
)
from visprune.methods import match_query_width, pool_text_queries, pool_text_query


@pytest.mark.parametrize(("n", "d", "k", "seed"), PROBLEMS, ids=PROBLEM_IDS)
@pytest.mark.parametrize(
    ("times", "plus"), [(1, 0), (2, 0), (3, 1), (0, 3)], ids=["same", "divisible", "pool", "tile"]
)
def test_rediprune_matches_reference(n, d, k, seed, times, plus):
    """ReDiPrune = relevance-first pick, then max-min distance plus ``alpha * rel``.

    The prompt width ``times * d + plus`` exercises each of the four width-matching rules.
    """
    tokens = make_tokens((n, d), seed=seed)
    text = make_tokens((7, times * d + plus), seed=seed + 100)
    for alpha in (0.5, 2.0):
        kept = visprune.select("rediprune", tokens, k, text=text, alpha=alpha)
        assert kept.tolist() == ref_rediprune(tokens, text, k, alpha)


def test_rediprune_empty_text_is_pure_diversity_from_token_zero():
    """An empty prompt tail gives zero relevance: first pick 0 (argmax of zeros), then max-min."""
    tokens = make_tokens((40, 12), seed=6)
    kept = visprune.select("rediprune", tokens, 9, text=torch.zeros(0, 36))
    zero_query = visprune.select("rediprune", tokens, 9, query=torch.zeros(12))
    assert torch.equal(kept, zero_query)
    assert 0 in kept.tolist()
    dist = 1 - _unit(tokens.double()) @ _unit(tokens.double()).T
    picks = [0]
    while len(picks) < 9:
        rest = [j for j in range(40) if j not in picks]
        nearest = [min(float(dist[s, j]) for s in picks) if j in rest else 0.0 for j in range(40)]
        picks.append(_argmax(nearest, rest))
    assert kept.tolist() == sorted(picks)


def test_rediprune_query_path_equals_text_path():
    """``query=pool_text_query(text)`` selects exactly what ``text=text`` selects."""
    tokens = make_tokens((50, 16), seed=7)
    for width in (16, 48, 40, 5):
        text = make_tokens((9, width), seed=width)
        by_text = visprune.select("rediprune", tokens, 8, text=text)
        by_query = visprune.select("rediprune", tokens, 8, query=pool_text_query(text))
        assert torch.equal(by_text, by_query)


def test_rediprune_batched_query():
    """A ``(b, d_q)`` query gives each item the result of its own row; ``(d_q,)`` is shared."""
    tokens = make_tokens((3, 30, 8), seed=8)
    queries = make_tokens((3, 24), seed=9)
    kept = visprune.select("rediprune", tokens, 5, query=queries)
    for item in range(3):
        single = visprune.select("rediprune", tokens[item], 5, query=queries[item])
        assert torch.equal(kept[item], single)
    shared = visprune.select("rediprune", tokens, 5, query=queries[0])
    for item in range(3):
        single = visprune.select("rediprune", tokens[item], 5, query=queries[0])
        assert torch.equal(shared[item], single)


def test_rediprune_large_alpha_is_top_k_relevance():
    """When relevance dominates the diversity term, the picks are the top-k by relevance."""
    tokens = make_tokens((40, 8), seed=10)
    query = make_tokens((8,), seed=11)
    relevance = F.cosine_similarity(tokens.double(), query.double()[None], dim=-1)
    kept = visprune.select("rediprune", tokens, 6, query=query, alpha=1e4)
    assert kept.tolist() == sorted(relevance.topk(6).indices.tolist())


def test_rediprune_first_pick_is_most_relevant():
    """The most relevant token is always kept, even with ``k = 1`` and ``alpha = 0``."""
    tokens = make_tokens((40, 8), seed=12)
    query = tokens[23] * 3.0
    for alpha in (0.0, 0.5):
        assert visprune.select("rediprune", tokens, 1, query=query, alpha=alpha).tolist() == [23]


def test_rediprune_tau_shortlist():
    """``tau > 0`` and ``k < n // 2``: picks come from the top ``max(3k, k + 1)`` by relevance."""
    tokens = make_tokens((60, 8), seed=13)
    query = make_tokens((8,), seed=14)
    relevance = F.cosine_similarity(tokens, query[None], dim=-1)
    for k in (3, 10):
        kept = visprune.select("rediprune", tokens, k, query=query, tau=0.2)
        shortlist = set(relevance.topk(max(3 * k, k + 1)).indices.tolist())
        assert set(kept.tolist()) <= shortlist
    unrestricted = visprune.select("rediprune", tokens, 10, query=query, tau=0.0)
    assert not set(unrestricted.tolist()) <= set(relevance.topk(11).indices.tolist())


def test_rediprune_tau_threshold():
    """``tau > 0`` and ``k >= n // 2``: picks have ``rel >= tau``, or are the top-k if too few."""
    tokens = make_tokens((40, 8), seed=15)
    query = make_tokens((8,), seed=16)
    relevance = F.cosine_similarity(tokens, query[None], dim=-1)
    passing = set((relevance >= 0.05).nonzero().flatten().tolist())
    assert len(passing) >= 20
    kept = visprune.select("rediprune", tokens, 20, query=query, tau=0.05)
    assert set(kept.tolist()) <= passing
    strict = visprune.select("rediprune", tokens, 20, query=query, tau=0.9)
    assert strict.tolist() == sorted(relevance.topk(20).indices.tolist())


def test_pool_text_query_matches_reference():
    """Self-attention over unit rows, then recency weights ``exp(3 l / (L - 1))``."""
    for rows, width in [(2, 4), (5, 16), (40, 7)]:
        text = make_tokens((rows, width), seed=rows)
        pooled = pool_text_query(text)
        assert pooled.dtype == torch.float32 and pooled.shape == (width,)
        torch.testing.assert_close(pooled.double(), ref_pool(text), atol=1e-5, rtol=1e-5)


def test_pool_text_query_edge_lengths():
    """One row is returned as is; zero rows give a zero vector of the text width."""
    row = make_tokens((1, 12), seed=1)
    assert torch.equal(pool_text_query(row), row[0])
    empty = pool_text_query(torch.zeros(0, 12))
    assert empty.shape == (12,) and bool((empty == 0).all())
    half = pool_text_query(row.half())
    assert half.dtype == torch.float32 and torch.equal(half, row[0].half().float())


@pytest.mark.parametrize("width", [12, 7])
def test_pool_text_queries_pools_each_prompt_as_alone(width):
    """One batched call over prompts of different lengths (empty, one token, past the 128-row
    cap, one repeated) gives each prompt exactly its query alone."""
    texts = [make_tokens((m, width), seed=m) if m else torch.zeros(0, width) for m in (0, 1, 5)]
    texts += [make_tokens((130, width), seed=130), make_tokens((40, width), seed=40), texts[2]]
    batch = pool_text_queries(texts)
    assert batch.shape == (6, width)
    for row, text in zip(batch, texts, strict=True):
        assert torch.equal(row, pool_text_query(text))
    assert not bool(batch[0].any()) and torch.equal(batch[1], texts[1][0])
    empty = pool_text_queries([torch.zeros(0, width), torch.zeros(0, width)])
    assert empty.shape == (2, width) and not bool(empty.any())


def test_pool_text_query_uses_only_last_128_rows():
    """Rows before the last 128 have no influence."""
    text = make_tokens((200, 8), seed=2)
    changed = text.clone()
    changed[:72] = make_tokens((72, 8), seed=3)
    assert torch.equal(pool_text_query(text), pool_text_query(text[-128:]))
    assert torch.equal(pool_text_query(text), pool_text_query(changed))
    changed[72] += 1.0
    assert not torch.equal(pool_text_query(text), pool_text_query(changed))


def test_pool_text_query_favours_recent_tokens():
    """Two orthogonal tokens: attention ``softmax([1, 0])``, recency ``[1, e³] / (1 + e³)``."""
    text = torch.eye(2) * 10.0
    stay = 1 / (1 + math.exp(-1))  # attention on itself; 1 - stay on the other token
    recent = math.exp(3) / (1 + math.exp(3))
    first = 10 * ((1 - recent) * stay + recent * (1 - stay))
    last = 10 * ((1 - recent) * (1 - stay) + recent * stay)
    pooled = pool_text_query(text)
    torch.testing.assert_close(pooled, torch.tensor([first, last]))
    assert pooled[1] > pooled[0]


@pytest.mark.parametrize(
    ("query", "width", "expected"),
    [
        ([0.0, 1.0, 2.0, 3.0, 4.0, 5.0], 3, [0.5, 2.5, 4.5]),  # divisible: group means
        ([0.0, 1.0, 2.0, 3.0, 4.0], 3, [0.5, 2.0, 3.5]),  # adaptive average pooling
        ([1.0, 2.0, 3.0], 7, [1.0, 2.0, 3.0, 1.0, 2.0, 3.0, 1.0]),  # tile and truncate
        ([1.0, 2.0, 3.0], 3, [1.0, 2.0, 3.0]),  # identity
    ],
    ids=["divisible", "adaptive", "tile", "identity"],
)
def test_match_query_width_cases(query, width, expected):
    """The four parameter-free width-matching rules, on ``(D,)`` and on ``(b, D)``."""
    vector = torch.tensor(query)
    torch.testing.assert_close(match_query_width(vector, width), torch.tensor(expected))
    batch = torch.stack([vector, 2 * vector])
    torch.testing.assert_close(
        match_query_width(batch, width), torch.tensor([expected, [2 * v for v in expected]])
    )


@pytest.mark.parametrize(("size", "width"), [(4096, 1024), (4096, 1152), (3584, 1280), (7, 30)])
def test_match_query_width_matches_reference(size, width):
    """Realistic widths (LLM hidden size to vision width) agree with the reference pooling."""
    query = make_tokens((size,), seed=size)
    matched = match_query_width(query, width)
    assert matched.shape == (width,)
    torch.testing.assert_close(matched.double(), ref_match_width(query.double(), width))
