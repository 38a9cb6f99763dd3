"""What each method does, checked against slow float64 references written from the method pages.

The references below follow ``docs/methods/<name>.md`` step by step (explicit loops, full matrices,
``slogdet`` instead of incremental Cholesky) and share no code with the package.
"""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

import visprune
from conftest import assert_valid_indices, make_tokens
from visprune.functional.otprune import column_normalise
from visprune.methods import match_query_width, pool_text_queries, pool_text_query

# --- slow references (float64) -------------------------------------------------------------------


def _unit(x: Tensor) -> Tensor:
    norms = x.norm(dim=-1, keepdim=True)
    return torch.where(norms > 0, x / torch.where(norms > 0, norms, 1.0), 0.0)


def _argmax(scores: list[float], allowed: list[int]) -> int:
    """The lowest index with the largest score among ``allowed``."""
    best = max(scores[i] for i in allowed)
    return min(i for i in allowed if scores[i] == best)


def ref_divprune(x: Tensor, k: int) -> list[int]:
    x = x.double()
    n = x.shape[0]
    dist = 1 - _unit(x) @ _unit(x).T
    isolation = [sorted(dist[:, j].tolist())[1] for j in range(n)]
    picks = [_argmax(isolation, list(range(n)))]
    while len(picks) < k:
        rest = [j for j in range(n) if j not in picks]
        nearest = [min(float(dist[s, j]) for s in picks) if j in rest else 0.0 for j in range(n)]
        picks.append(_argmax(nearest, rest))
    return sorted(picks)


def ref_otprune(x: Tensor, k: int, gamma: float = 0.01) -> list[int]:
    x = x.double()
    n = x.shape[0]
    norms = x.norm(dim=0, keepdim=True)
    xt = torch.where(norms > 0, x / torch.where(norms > 0, norms, 1.0), 0.0)
    s = xt @ xt.T
    kernel = torch.eye(n, dtype=torch.float64) + gamma * s @ s.T
    picks: list[int] = []
    while len(picks) < k:
        rest = [j for j in range(n) if j not in picks]
        gains = [0.0] * n
        for j in rest:
            chosen = [*picks, j]
            sub = kernel[chosen][:, chosen]
            gains[j] = float(torch.linalg.slogdet(sub).logabsdet)
        picks.append(_argmax(gains, rest))
    return sorted(picks)


def ref_pool(text: Tensor) -> Tensor:
    rows = text.double()[-128:]
    length = rows.shape[0]
    if length == 0:
        return torch.zeros(text.shape[1], dtype=torch.float64)
    if length == 1:
        return rows[0]
    unit = _unit(rows)
    affinity = unit @ unit.T
    attention = torch.softmax(affinity - affinity.max(dim=1, keepdim=True).values, dim=1)
    context = attention @ rows
    weights = torch.tensor([math.exp(3 * i / (length - 1)) for i in range(length)])
    weights = weights.double() / weights.sum()
    return (weights[:, None] * context).sum(0)


def ref_match_width(q: Tensor, width: int) -> Tensor:
    size = q.shape[0]
    if size == width:
        return q
    if size > width and size % width == 0:
        group = size // width
        return torch.stack([q[i * group : (i + 1) * group].mean() for i in range(width)])
    if size > width:
        bins = []
        for i in range(width):
            start, end = (i * size) // width, -((-(i + 1) * size) // width)
            bins.append(q[start:end].mean())
        return torch.stack(bins)
    return torch.cat([q] * math.ceil(width / size))[:width]


def ref_rediprune(v: Tensor, text: Tensor, k: int, alpha: float = 0.5) -> list[int]:
    v = v.double()
    n, d = v.shape
    query = ref_match_width(ref_pool(text), d)
    rel = (_unit(v) @ _unit(query[None])[0]).tolist()
    dist = 1 - _unit(v) @ _unit(v).T
    picks = [_argmax(rel, list(range(n)))]
    while len(picks) < k:
        rest = [j for j in range(n) if j not in picks]
        score = [0.0] * n
        for j in rest:
            score[j] = min(float(dist[s, j]) for s in picks) + alpha * rel[j]
        picks.append(_argmax(score, rest))
    return sorted(picks)


def ref_resprune_weights(x: Tensor, text: Tensor | None, alpha: float) -> Tensor:
    n = x.shape[0]
    if text is None or text.shape[0] == 0 or alpha == 0:
        return torch.ones(n, dtype=torch.float64)
    mean = _unit(text.double()).mean(0)
    r = _unit(x.double()) @ _unit(mean[None])[0]
    if float(r.max() - r.min()) <= 0:
        return torch.ones(n, dtype=torch.float64)
    return ((r - r.min()) / (r.max() - r.min())) ** alpha


def ref_resprune(x: Tensor, k: int, text: Tensor | None = None, alpha: float = 0.5) -> list[int]:
    x = x.double()
    g = ref_resprune_weights(x, text, alpha)
    prior = g * (x * x).sum(-1)
    threshold = 1e-6 * float(prior.max())
    residual = x.clone()
    picks: list[int] = []
    exhausted = False
    while len(picks) < k:
        rest = [j for j in range(x.shape[0]) if j not in picks]
        scores = (g * (residual * residual).sum(-1)).tolist()
        best = _argmax(scores, rest)
        exhausted = exhausted or scores[best] <= threshold
        if exhausted:
            picks.append(_argmax(prior.tolist(), rest))
            continue
        u = residual[best] / residual[best].norm()
        residual = residual - (residual @ u)[:, None] * u[None]
        picks.append(best)
    return sorted(picks)


def ref_alignment(x: Tensor, text: Tensor) -> Tensor:
    xu, tu = _unit(x.double()), _unit(text.double())
    return -((xu[:, None, :] - tu[None, :, :]) ** 2).sum(-1).mean(1)


def ref_trimtokenator(x: Tensor, k: int, text: Tensor | None = None) -> list[int]:
    n = x.shape[0]
    if text is None or text.shape[0] == 0:
        aligned = list(range(n))
    else:
        a = ref_alignment(x, text)
        aligned = [i for i in range(n) if a[i] >= a.mean()]
        if len(aligned) < k:
            aligned = sorted(a.argsort(descending=True, stable=True)[:k].tolist())
    xu = _unit(x.double())
    dist = 1 - xu @ xu.T
    spread = [float(dist[i, aligned].sum()) for i in range(n)]
    picks = [_argmax(spread, aligned)]
    while len(picks) < k:
        rest = [i for i in aligned if i not in picks]
        total = [float(dist[i, picks].sum()) for i in range(n)]
        picks.append(_argmax(total, rest))
    return sorted(picks)


# --- the methods against their references --------------------------------------------------------

PROBLEMS = [(30, 12, 8, 0), (30, 12, 8, 1), (60, 24, 10, 2), (45, 6, 12, 3), (20, 40, 5, 4)]
PROBLEM_IDS = [f"n{n}-d{d}-k{k}-s{s}" for n, d, k, s in PROBLEMS]


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


# --- uniform and random --------------------------------------------------------------------------


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


# --- DivPrune ------------------------------------------------------------------------------------


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


# --- OTPrune -------------------------------------------------------------------------------------


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


# --- ReDiPrune -----------------------------------------------------------------------------------


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


# --- the ReDiPrune query helpers -----------------------------------------------------------------


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


# --- ResPrune ------------------------------------------------------------------------------------


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


# --- TrimTokenator -------------------------------------------------------------------------------


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


# --- CDPruner, VisPruner, VisionZip: slow references ------------------------------------------


def ref_cdpruner(x: Tensor, e: Tensor, t: Tensor, k: int) -> list[int]:
    """Greedy log-det of ``L = diag(r) S diag(r)`` with ``slogdet`` (float64)."""
    x, e, t = x.double(), e.double(), t.double()
    n = x.shape[0]
    similarity = _unit(x) @ _unit(x).T
    r = -(_unit(e) @ _unit(t).T).mean(-1)
    r = (r - r.min() + 1e-6) / (r.max() - r.min())
    kernel = r[:, None] * similarity * r[None, :]
    chosen: list[int] = []
    for _ in range(k):
        gains = []
        for i in range(n):
            if i in chosen:
                gains.append(-math.inf)
                continue
            rows = [*chosen, i]
            sign, logdet = torch.linalg.slogdet(kernel[rows][:, rows])
            gains.append(logdet.item() if sign > 0 else -math.inf)
        chosen.append(_argmax(gains, [i for i in range(n) if i not in chosen]))
    return sorted(chosen)


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


def published_kept(a: list[int], ranked: list[int], size: int, drop: int) -> list[int] | None:
    """The a tokens the published round keeps: it indexes ``a``'s sorted tail with a batch
    index expanded to ``R // 2 - r`` and broadcasts the two (None where that raises)."""
    try:
        rows = torch.arange(1).unsqueeze(-1).expand(-1, size // 2 - drop)
        tail = torch.tensor(ranked[drop:], dtype=torch.long)[None]
        return torch.tensor(a)[None][rows, tail][0].tolist()
    except (RuntimeError, IndexError):
        return None


def ref_vispruner(x: Tensor, attention: Tensor, k: int, ratio: float) -> list[int]:
    """The published loop on Python lists (float64). A round keeps what the published round
    keeps, unless that raises or leaves fewer than k tokens: then the ``ceil(R / 2) - r`` a
    tokens it means to keep (at least enough for k)."""
    x = _unit(x.double())
    mean = attention.double().mean(0).tolist()
    order = sorted(range(len(mean)), key=lambda i: (-mean[i], i))
    important = int(k * ratio)
    diverse = k - important
    kept, residual = order[:important], order[important:]
    while diverse > 0 and len(residual) - diverse > 0:
        drop = min(8, len(residual) - diverse)
        a, b = residual[0::2], residual[1::2]
        scores = [max((x[i] @ x[j]).item() for j in b) for i in a]
        ranked = sorted(range(len(a)), key=lambda i: (-scores[i], i))
        kept_a = published_kept(a, ranked, len(residual), drop)
        if kept_a is None or len(kept_a) + len(b) < diverse:
            stay = max(len(a) - drop, diverse - len(b), 0)
            kept_a = [a[i] for i in ranked[drop : drop + stay]]
        residual = kept_a + b
    return sorted(kept + residual[:diverse])


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


def ref_visionzip(
    hidden: Tensor, attention: Tensor, keys: Tensor, cls: Tensor, k: int, ratio: float
):
    """The published merge with explicit loops (float64): kept patch indices and new tokens."""
    hidden, keys = hidden.double(), keys.double()
    contextual = min(round(k * ratio), k - 1)
    patches = k - contextual - 1
    summed = attention.double().sum(0).tolist()
    order = sorted(range(len(summed)), key=lambda i: (-summed[i], i))
    kept = sorted(order[:patches])
    remaining = [i for i in range(len(summed)) if i not in kept]
    step = max(1, len(remaining) // contextual) if contextual else 1
    targets = list(range(0, len(remaining), step))[:contextual]
    members: dict[int, list[int]] = {t: [] for t in targets}
    unit = _unit(keys)
    for position, token in enumerate(remaining):
        if position in members or not targets:
            continue
        sims = [(unit[token] @ unit[remaining[t]]).item() for t in targets]
        members[targets[_argmax(sims, list(range(len(targets))))]].append(token)
    merged = [cls.double()]
    for t in targets:
        group = members[t]
        mean = hidden[group].mean(0) if group else torch.zeros_like(hidden[0])
        merged.append(hidden[remaining[t]] + mean)
    return kept, torch.stack(merged)


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


# --- methods that prune inside the language model (selection on given scores) -----------------


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
