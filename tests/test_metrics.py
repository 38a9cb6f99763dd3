"""Distribution-preservation metrics, checked against slow float64 references.

The references below use full ``d x d`` covariances and ``eigh`` square roots, explicit loops for
nearest neighbours and relevance, and share no code with :mod:`visprune.metrics`.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

import visprune
from visprune.metrics import alignment_report, bures_wasserstein, coverage, relevance_retained

FAST = settings(max_examples=40, deadline=None)

# --- slow references (float64) -------------------------------------------------------------------


def _psd_sqrt(matrix: Tensor) -> Tensor:
    """Symmetric PSD square root via ``eigh``; eigenvalues below a rounding floor count as 0."""
    matrix = (matrix + matrix.T) / 2
    values, vectors = torch.linalg.eigh(matrix)
    floor = 1e-12 * max(float(values.abs().max()), 1e-300)
    values = torch.where(values > floor, values, torch.zeros_like(values))
    return (vectors * values.sqrt()) @ vectors.T


def _gaussian(x: Tensor) -> tuple[Tensor, Tensor]:
    """Mean ``(d,)`` and population covariance ``(d, d)`` of the rows of ``x``."""
    x = x.to(torch.float64)
    mu = x.mean(dim=0)
    centred = x - mu
    return mu, centred.T @ centred / x.shape[0]


def _w2_reference(x: Tensor, y: Tensor) -> float:
    """W2 between the Gaussians fitted to ``x`` and ``y`` with explicit ``d x d`` square roots."""
    mu_x, s_x = _gaussian(x)
    mu_y, s_y = _gaussian(y)
    root = _psd_sqrt(s_x)
    cross = torch.trace(_psd_sqrt(root @ s_y @ root))
    squared = float((mu_x - mu_y).square().sum() + torch.trace(s_x) + torch.trace(s_y) - 2 * cross)
    return math.sqrt(max(squared, 0.0))


def _cos(u: list[float], v: list[float]) -> float:
    nu = math.sqrt(sum(a * a for a in u))
    nv = math.sqrt(sum(b * b for b in v))
    if nu == 0 or nv == 0:
        return 0.0
    return max(-1.0, min(1.0, sum(a * b for a, b in zip(u, v, strict=True)) / (nu * nv)))


def _coverage_reference(x: Tensor, kept: list[int]) -> float:
    rows = x.to(torch.float64).tolist()
    dropped = [i for i in range(len(rows)) if i not in set(kept)]
    if not dropped:
        return 0.0
    return sum(min(1 - _cos(rows[i], rows[j]) for j in kept) for i in dropped) / len(dropped)


def _relevance_reference(x: Tensor, kept: list[int], text: Tensor) -> float:
    rows = x.to(torch.float64).tolist()
    texts = text.to(torch.float64).tolist()
    d = len(texts[0])
    query = [0.0] * d
    for t in texts:
        norm = math.sqrt(sum(v * v for v in t))
        for c in range(d):
            query[c] += (t[c] / norm if norm > 0 else 0.0) / len(texts)
    relevance = [max(_cos(r, query), 0.0) for r in rows]
    total = sum(relevance)
    return 1.0 if total == 0 else sum(relevance[i] for i in kept) / total


def _tokens(shape: tuple[int, ...], seed: int, dtype: torch.dtype = torch.float64) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype)


def _subset(n: int, k: int, seed: int) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=generator)[:k].sort().values


# --- bures_wasserstein ---------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 3), (5, 3), (10, 40), (64, 8)], ids=str)
def test_w2_of_a_set_with_itself_is_zero(shape):
    x = _tokens(shape, seed=0) * 3 + 1
    assert bures_wasserstein(x, x) == pytest.approx(0.0, abs=1e-6)
    assert bures_wasserstein(x, x.flip(0)) == pytest.approx(0.0, abs=1e-6)


@FAST
@given(
    n=st.integers(1, 12),
    k=st.integers(1, 12),
    d=st.integers(1, 10),
    seed=st.integers(0, 2**16),
    shift=st.floats(-3, 3),
)
def test_w2_matches_slow_reference(n, k, d, seed, shift):
    """Span-based formula == explicit ``d x d`` matrix square roots, for n < d and n > d."""
    x = _tokens((n, d), seed)
    y = _tokens((k, d), seed + 1) * 1.7 + shift
    expected = _w2_reference(x, y)
    assert bures_wasserstein(x, y) == pytest.approx(expected, rel=1e-6, abs=1e-6)


@pytest.mark.parametrize(("n", "k", "d"), [(4, 3, 20), (6, 9, 15), (40, 10, 6), (50, 30, 4)])
def test_w2_matches_slow_reference_both_regimes(n, k, d):
    """Deterministic cover of n < d, k < d, n > d and k > d (the QR reduction)."""
    x = _tokens((n, d), seed=n)
    y = _tokens((k, d), seed=k + 100) @ _tokens((d, d), seed=7) * 0.5 + 0.3
    assert bures_wasserstein(x, y) == pytest.approx(_w2_reference(x, y), rel=1e-6)


@FAST
@given(n=st.integers(1, 10), k=st.integers(1, 10), d=st.integers(1, 8), seed=st.integers(0, 999))
def test_w2_is_symmetric(n, k, d, seed):
    x = _tokens((n, d), seed)
    y = _tokens((k, d), seed + 1) + 0.5
    assert bures_wasserstein(x, y) == pytest.approx(bures_wasserstein(y, x), rel=1e-9, abs=1e-7)


@FAST
@given(seed=st.integers(0, 999), scale=st.floats(-50, 50))
def test_w2_is_translation_invariant(seed, scale):
    x = _tokens((12, 7), seed)
    y = x[:5] * 0.8
    shift = _tokens((7,), seed + 1) * scale
    before = bures_wasserstein(x, y)
    assert bures_wasserstein(x + shift, y + shift) == pytest.approx(before, rel=1e-6, abs=1e-6)


@FAST
@given(
    mu1=st.floats(-5, 5),
    mu2=st.floats(-5, 5),
    s1=st.floats(0.01, 5),
    s2=st.floats(0.01, 5),
)
def test_w2_one_dimensional_closed_form(mu1, mu2, s1, s2):
    """In 1-D, ``W2 = sqrt((mu1 - mu2)² + (s1 - s2)²)``; ``±1`` points have std exactly 1."""
    unit = torch.tensor([[-1.0], [1.0], [-1.0], [1.0]], dtype=torch.float64)
    x = unit[:2] * s1 + mu1
    y = unit * s2 + mu2
    expected = math.hypot(mu1 - mu2, s1 - s2)
    assert bures_wasserstein(x, y) == pytest.approx(expected, rel=1e-6, abs=1e-6)


def test_w2_single_kept_token_is_mean_offset_plus_spread():
    """A one-token Gaussian is a point mass: ``W2² = ||mu_f - x_j||² + tr S_f``."""
    x = _tokens((9, 5), seed=3)
    mu, s = _gaussian(x)
    expected = math.sqrt(float((mu - x[4]).square().sum() + torch.trace(s)))
    assert bures_wasserstein(x, x[4:5]) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
def test_w2_accepts_any_float_dtype(dtype):
    x = _tokens((20, 6), seed=1).to(dtype)
    expected = _w2_reference(x.double(), x[:7].double())
    assert bures_wasserstein(x, x[:7]) == pytest.approx(expected, rel=1e-6)


def test_w2_of_wide_tokens_matches_the_small_span_form():
    """n = 576, d = 4096: equals the same sets projected on their joint span (no d x d matrix)."""
    x = _tokens((576, 4096), seed=0, dtype=torch.float32).double()
    kept = x[_subset(576, 64, seed=1)]
    basis, _ = torch.linalg.qr(x.T)  # (d, 576): x lies in this span, kept too
    value = bures_wasserstein(x, kept)
    assert math.isfinite(value) and value > 0
    assert value == pytest.approx(bures_wasserstein(x @ basis, kept @ basis), rel=1e-6)


def test_divprune_keeps_clusters_better_than_one_cluster():
    """One token per well-separated cluster fits the mixture better than k tokens of one."""
    clusters, per, d = 4, 40, 16
    centres = torch.linalg.qr(_tokens((d, clusters), seed=5)).Q.T * 20  # orthogonal directions
    noise = _tokens((clusters, per, d), seed=6) * 0.3
    x = (centres[:, None, :] + noise).reshape(clusters * per, d).float()
    spread = visprune.select("divprune", x, clusters)
    assert sorted({int(i) // per for i in spread}) == list(range(clusters))
    one_cluster = torch.arange(clusters)
    assert bures_wasserstein(x, x[spread]) < 0.5 * bures_wasserstein(x, x[one_cluster])
    assert coverage(x, spread) < coverage(x, one_cluster)


# --- coverage ------------------------------------------------------------------------------------


def test_coverage_is_zero_when_all_kept():
    x = _tokens((10, 4), seed=0)
    assert coverage(x, torch.arange(10)) == 0.0
    assert coverage(x, torch.arange(10).flip(0)) == 0.0


@FAST
@given(n=st.integers(2, 15), d=st.integers(1, 6), data=st.data())
def test_coverage_matches_brute_force(n, d, data):
    seed = data.draw(st.integers(0, 999))
    k = data.draw(st.integers(1, n - 1))
    x = _tokens((n, d), seed)
    kept = _subset(n, k, seed + 1)
    value = coverage(x, kept)
    assert value == pytest.approx(_coverage_reference(x, kept.tolist()), rel=1e-9, abs=1e-12)
    assert 0.0 <= value <= 2.0


def test_coverage_positive_when_tokens_dropped():
    x = _tokens((10, 4), seed=2)
    assert coverage(x, torch.tensor([0, 3, 5])) > 0


def test_coverage_handles_zero_rows():
    x = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 2.0]])
    kept = torch.tensor([0])
    assert coverage(x, kept) == pytest.approx(_coverage_reference(x, [0]))
    assert coverage(x, kept) == pytest.approx(1.0)


# --- relevance_retained --------------------------------------------------------------------------


def test_relevance_is_one_when_all_kept():
    x, text = _tokens((12, 5), seed=0), _tokens((3, 5), seed=1)
    assert relevance_retained(x, torch.arange(12), text) == pytest.approx(1.0)


@FAST
@given(n=st.integers(1, 15), m=st.integers(1, 4), d=st.integers(1, 6), data=st.data())
def test_relevance_matches_brute_force(n, m, d, data):
    seed = data.draw(st.integers(0, 999))
    k = data.draw(st.integers(1, n))
    x, text = _tokens((n, d), seed), _tokens((m, d), seed + 7)
    kept = _subset(n, k, seed + 1)
    value = relevance_retained(x, kept, text)
    expected = _relevance_reference(x, kept.tolist(), text)
    assert value == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert 0.0 <= value <= 1.0


def test_relevance_is_one_when_nothing_is_relevant():
    x = torch.tensor([[-1.0, 0.0], [0.0, -1.0]])
    assert relevance_retained(x, torch.tensor([0]), torch.tensor([[1.0, 1.0]])) == 1.0
    cancelling = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])  # pooled query is zero
    assert relevance_retained(x, torch.tensor([1]), cancelling) == 1.0


def test_relevance_counts_only_positive_mass():
    x = torch.tensor([[1.0, 0.0], [2.0, 0.0], [-1.0, 0.0], [0.0, 1.0]])
    text = torch.tensor([[1.0, 0.0]])
    assert relevance_retained(x, torch.tensor([0]), text) == pytest.approx(0.5)
    assert relevance_retained(x, torch.tensor([2, 3]), text) == pytest.approx(0.0)


# --- alignment_report ----------------------------------------------------------------------------


def test_report_keys_and_values():
    x, text = _tokens((30, 8), seed=0, dtype=torch.float32), _tokens((4, 8), seed=1)
    kept = visprune.select("divprune", x, 6)
    report = alignment_report(x, kept)
    assert set(report) == {"w2", "coverage"}
    assert report["w2"] == pytest.approx(bures_wasserstein(x, x[kept]))
    assert report["coverage"] == pytest.approx(coverage(x, kept))
    full = alignment_report(x, kept, text)
    assert set(full) == {"w2", "coverage", "relevance"}
    assert full["relevance"] == pytest.approx(relevance_retained(x, kept, text))
    assert all(isinstance(v, float) for v in full.values())


# --- errors --------------------------------------------------------------------------------------

X = torch.randn(6, 3)
T = torch.randn(2, 3)
INDEX_FUNCTIONS = [
    pytest.param(lambda i: coverage(X, i), id="coverage"),
    pytest.param(lambda i: relevance_retained(X, i, T), id="relevance"),
    pytest.param(lambda i: alignment_report(X, i), id="report"),
]


@pytest.mark.parametrize("call", INDEX_FUNCTIONS)
@pytest.mark.parametrize(
    ("index", "match"),
    [
        (torch.tensor([], dtype=torch.long), "empty"),
        (torch.tensor([[0, 1]]), "1-D"),
        (torch.tensor([0.0, 1.0]), "integer"),
        (torch.tensor([True, False]), "integer"),
        (torch.tensor([0, 6]), r"\[0, 6\)"),
        (torch.tensor([-1, 2]), r"\[0, 6\)"),
        (torch.tensor([1, 2, 1]), "1 duplicate"),
        ([0, 1], "torch.Tensor"),
    ],
    ids=["empty", "rank", "float", "bool", "too-high", "negative", "duplicate", "list"],
)
def test_bad_index_raises(call, index, match):
    with pytest.raises(ValueError, match=match):
        call(index)


BAD_TOKENS = [
    (torch.randn(6), "shape"),
    (torch.randn(2, 6, 3), "shape"),
    (torch.zeros(0, 3), "empty"),
    (torch.zeros(3, 0), "empty"),
    (torch.ones(6, 3, dtype=torch.long), "floating"),
    (torch.tensor([[1.0, float("nan")], [float("inf"), 0.0]]), "2 non-finite"),
]


@pytest.mark.parametrize(("tokens", "match"), BAD_TOKENS)
def test_bad_tokens_raise(tokens, match):
    with pytest.raises(ValueError, match=f"bures_wasserstein: full .*{match}"):
        bures_wasserstein(tokens, torch.randn(2, 3))
    with pytest.raises(ValueError, match=f"bures_wasserstein: kept .*{match}"):
        bures_wasserstein(torch.randn(4, 3), tokens)
    with pytest.raises(ValueError, match=f"coverage: full .*{match}"):
        coverage(tokens, torch.tensor([0]))
    with pytest.raises(ValueError, match=f"relevance_retained: text .*{match}"):
        relevance_retained(X, torch.tensor([0]), tokens)


def test_width_mismatch_raises():
    with pytest.raises(ValueError, match="same width, got 3 and 4"):
        bures_wasserstein(X, torch.randn(2, 4))
    with pytest.raises(ValueError, match="text width 4 must equal the token width 3"):
        relevance_retained(X, torch.tensor([0]), torch.randn(2, 4))
    with pytest.raises(ValueError, match="text width"):
        alignment_report(X, torch.tensor([0]), torch.randn(2, 4))


@pytest.mark.parametrize("eps", [-1.0, float("nan"), float("inf"), "1e-6", True])
def test_bad_eps_raises(eps):
    with pytest.raises(ValueError, match="eps must be a finite number"):
        bures_wasserstein(X, X, eps=eps)
