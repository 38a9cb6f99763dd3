"""The seed methods' own theory, checked on small random images (hypothesis, derandomised).

OTPrune maximises ``f(A) = log det (I + γ S Sᵀ)_A``, which its paper proves monotone and
submodular, so its greedy reaches ``(1 - 1/e)`` of the optimum. DivPrune's max-min greedy reaches
half of the best achievable minimum pairwise distance (a metric's triangle inequality).
ResPrune's residual energy ``g_i ‖x_i - P_S x_i‖²`` can only fall as ``S`` grows. A defect in an
objective shows here even where parity vectors agree.
"""

from __future__ import annotations

import itertools
import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from visprune.functional.logdet import logdet_greedy
from visprune.functional.otprune import column_normalise
from visprune.functional.resprune import _FeatureResiduals, _GramResiduals
from visprune.methods.divprune import DivPrune
from visprune.methods.otprune import OTPrune

FAST = settings(max_examples=25, derandomize=True, deadline=None)


@st.composite
def images(draw, low: int = 4, high: int = 10) -> torch.Tensor:
    """``(n, d)`` float64 tokens from a seed: gaussian, or clustered (near-duplicate tokens)."""
    n = draw(st.integers(low, high))
    d = draw(st.integers(2, 8))
    seed = draw(st.integers(0, 2**31 - 1))
    clustered = draw(st.booleans())
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randn(n, d, generator=g, dtype=torch.float64)
    if clustered:
        centres = torch.randn(max(2, n // 3), d, generator=g, dtype=torch.float64)
        which = torch.randint(0, len(centres), (n,), generator=g)
        tokens = centres[which] + 0.05 * tokens
    return tokens


# ------------------------------------------------------------------------------------ OTPrune
def otprune_kernel(tokens: torch.Tensor, gamma: float) -> torch.Tensor:
    """``K = I + γ S Sᵀ`` with ``S = X̃ X̃ᵀ`` on column-normalised tokens: ``(n, n)`` float64."""
    normalised = column_normalise(tokens[None].double())[0]
    similarity = normalised @ normalised.T
    return torch.eye(len(tokens), dtype=torch.float64) + gamma * similarity @ similarity.T


def logdet(kernel: torch.Tensor, subset) -> float:
    subset = sorted(subset)
    if not subset:
        return 0.0
    return float(torch.linalg.slogdet(kernel[subset][:, subset]).logabsdet)


GAMMAS = st.sampled_from([0.01, 1.0, 10.0])


@FAST
@given(images(), GAMMAS, st.data())
def test_otprune_objective_is_monotone_and_submodular(tokens, gamma, data):
    kernel = otprune_kernel(tokens, gamma)
    n = len(tokens)
    order = data.draw(st.permutations(range(n)))
    small_size = data.draw(st.integers(0, n - 2))
    large_size = data.draw(st.integers(small_size, n - 1))
    small, large, j = set(order[:small_size]), set(order[:large_size]), order[-1]
    gain_small = logdet(kernel, small | {j}) - logdet(kernel, small)
    gain_large = logdet(kernel, large | {j}) - logdet(kernel, large)
    assert gain_large >= -1e-9  # monotone: adding a token never lowers f
    assert gain_small >= gain_large - 1e-9  # submodular: gains shrink as the set grows


@FAST
@given(images(high=12), GAMMAS, st.data())
def test_otprune_greedy_reaches_one_minus_one_over_e_of_the_optimum(tokens, gamma, data):
    n = len(tokens)
    k = data.draw(st.integers(1, n - 1))
    kernel = otprune_kernel(tokens, gamma)
    picked = OTPrune(budget=k, gamma=gamma).select(tokens.float(), k).tolist()
    assert len(set(picked)) == k
    best = max(logdet(kernel, subset) for subset in itertools.combinations(range(n), k))
    assert logdet(kernel, picked) >= (1 - 1 / math.e) * best - 1e-6


@FAST
@given(images(high=12), GAMMAS, st.data())
def test_otprune_greedy_takes_the_largest_gain_and_gains_shrink(tokens, gamma, data):
    n = len(tokens)
    k = data.draw(st.integers(1, n))
    kernel = otprune_kernel(tokens, gamma)
    normalised = column_normalise(tokens[None])
    order = logdet_greedy(normalised @ normalised.mT, gamma, k)[0].tolist()
    chosen: list[int] = []
    last_gain = math.inf
    for pick in order:
        gains = {j: logdet(kernel, [*chosen, j]) - logdet(kernel, chosen) for j in range(n)}
        for j in chosen:
            del gains[j]
        assert gains[pick] >= max(gains.values()) - 1e-9  # the greedy step of f itself
        assert gains[pick] <= last_gain + 1e-9  # submodular: the greedy's gains never grow
        last_gain = gains[pick]
        chosen.append(pick)


# ----------------------------------------------------------------------------------- DivPrune
def chordal(tokens: torch.Tensor) -> torch.Tensor:
    """``‖x̂_i - x̂_j‖ = sqrt(2 (1 - cos))``: a metric, monotone in DivPrune's cosine distance,
    so the max-min greedy on either picks the same tokens."""
    unit = tokens / tokens.norm(dim=-1, keepdim=True)
    return torch.cdist(unit, unit)


def min_pairwise(distance: torch.Tensor, subset) -> float:
    subset = list(subset)
    return min(float(distance[i, j]) for i, j in itertools.combinations(subset, 2))


@FAST
@given(images(high=12), st.data())
def test_divprune_greedy_reaches_half_the_best_minimum_distance(tokens, data):
    n = len(tokens)
    k = data.draw(st.integers(2, n - 1))
    distance = chordal(tokens)
    picked = DivPrune(budget=k).select(tokens.float(), k).tolist()
    assert len(set(picked)) == k
    best = max(min_pairwise(distance, s) for s in itertools.combinations(range(n), k))
    assert min_pairwise(distance, picked) >= best / 2 - 1e-6


# ----------------------------------------------------------------------------------- ResPrune
def residual_energy(tokens: torch.Tensor, subset: list[int]) -> torch.Tensor:
    """``‖x_i - P_S x_i‖²`` for every token (least squares in float64): ``(n,)``."""
    if not subset:
        return (tokens * tokens).sum(-1)
    basis = tokens[subset].T  # (d, |S|)
    coefficients = torch.linalg.lstsq(basis, tokens.T, driver="gelsd").solution
    residual = tokens.T - basis @ coefficients
    return (residual * residual).sum(0)


@FAST
@given(images(high=12), st.sampled_from([_GramResiduals, _FeatureResiduals]), st.data())
def test_resprune_residual_energy_never_grows_with_a_pick(tokens, state_type, data):
    n, d = tokens.shape
    k = data.draw(st.integers(1, min(n, d)))
    x = tokens[None].float()
    weights = torch.rand(1, n, generator=torch.Generator().manual_seed(n * d), dtype=torch.float32)
    weights = weights + 0.1
    prior = weights * (x * x).sum(-1)
    state = state_type(x, weights, prior, k)
    scale = float(prior.max())
    picks: list[int] = []
    previous = prior[0].clone()
    for _ in range(k):
        best, pick = state.best()
        picks.append(int(pick))
        if len(picks) == k:
            break
        state.update(pick, best)
        exact = weights[0].double() * residual_energy(tokens, picks)
        free = torch.ones(n, dtype=torch.bool)
        free[picks] = False
        now = state.scores[0]
        # The tracked scores are the weighted residual energies, and none of them grew.
        torch.testing.assert_close(now[free].double(), exact[free], rtol=0, atol=1e-4 * scale)
        assert bool((now[free] <= previous[free] + 1e-5 * scale).all())
        previous = now.clone()
