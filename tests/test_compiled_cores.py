"""Every greedy core traces whole under ``torch.compile(fullgraph=True)`` and picks as eager.

``fullgraph=True`` raises on any graph break, so a host read (``.item()``, ``bool(t)``,
``nonzero``) or a strided ``out=`` inside a loop fails here. The cores' shapes depend only on
``(b, n, k)``, which is what CUDA graphs need to capture them. Small ``n`` and ``k`` keep the
compilations short (inductor, about a minute in all); ``-m "not compiled"`` skips them.
"""

from __future__ import annotations

import pytest
import torch

import visprune
import visprune.functional.logdet as otprune_module
from visprune import Context
from visprune.functional.cdpruner import conditional_dpp
from visprune.functional.dart import claim_least_duplicated
from visprune.functional.divprune import cosine_distance, max_min_greedy
from visprune.functional.logdet import logdet_greedy
from visprune.functional.otprune import column_normalise
from visprune.functional.resprune import residual_energy_greedy
from visprune.functional.trimtokenator import repmax_greedy
from visprune.functional.vispruner import vispruner

pytestmark = pytest.mark.compiled

B, N, D, K = 2, 32, 16, 4


def inputs() -> dict[str, torch.Tensor]:
    """Seeded tokens, with a duplicated pair so that ties are decided too."""
    generator = torch.Generator().manual_seed(7)
    tokens = torch.randn(B, N, D, generator=generator)
    tokens[:, 5] = tokens[:, 9]
    unit = tokens / tokens.norm(dim=-1, keepdim=True)
    weights = torch.rand(B, N, generator=generator) + 0.1
    normalised = column_normalise(tokens)
    return {
        "tokens": tokens,
        "unit": unit,
        "weights": weights,
        "prior": weights * (tokens * tokens).sum(-1),
        "distance": cosine_distance(tokens),
        "similarity": normalised @ normalised.mT,
        "attention": torch.rand(B, 3, N, generator=generator),
    }


def divprune(x):
    return max_min_greedy(x["distance"], x["distance"].sum(-1).argmax(-1), K)


def rediprune(x):
    first = x["weights"].argmax(-1)
    return max_min_greedy(x["distance"], first, K, 0.5 * x["weights"])


def otprune(x):
    return logdet_greedy(x["similarity"], 0.01, K, lazy_rows=False)


def resprune(x):
    threshold = 1e-6 * x["prior"].amax(-1)
    return residual_energy_greedy(x["tokens"], x["weights"], x["prior"], threshold, K)


def resprune_feature_space(x):
    """``2 k > d``: the residuals are kept in feature space, and the span runs out."""
    tokens = x["tokens"][..., :3]
    prior = x["weights"] * (tokens * tokens).sum(-1)
    return residual_energy_greedy(tokens, x["weights"], prior, 1e-6 * prior.amax(-1), K)


def trimtokenator(x):
    excluded = x["weights"] < 0.3
    spread = x["distance"].sum(-1).masked_fill(excluded, -torch.inf)
    return repmax_greedy(x["distance"], spread, excluded, K)


def cdpruner(x):
    return conditional_dpp(x["unit"] @ x["unit"].mT, x["weights"], K)


def cdpruner_rank_exhausted(x):
    """More picks than the kernel's rank: the frozen picks are decided on the device."""
    unit = x["unit"][..., :3]
    return conditional_dpp(unit @ unit.mT, x["weights"], 6)


def vispruner_core(x):
    return vispruner(x["tokens"], x["attention"], 2 * K)


def dart(x):
    pool = torch.ones(B, N, dtype=torch.bool)
    shares = torch.tensor([[2, 1, 1], [1, 1, 0]])
    return claim_least_duplicated(x["unit"], pool, x["unit"][:, :3], shares)


CORES = [
    divprune,
    rediprune,
    otprune,
    resprune,
    resprune_feature_space,
    trimtokenator,
    cdpruner,
    cdpruner_rank_exhausted,
    vispruner_core,
    dart,
]


@pytest.mark.parametrize("core", CORES, ids=[core.__name__ for core in CORES])
def test_core_compiles_whole_and_picks_as_eager(core):
    torch._dynamo.reset()
    eager = core(inputs())
    compiled = torch.compile(core, fullgraph=True)(inputs())
    assert torch.equal(compiled, eager), (compiled.tolist(), eager.tolist())


#: Methods whose ``_select`` is one greedy (or claiming) core plus device-side preparation.
SELECTING = ["divprune", "otprune", "rediprune", "resprune", "trimtokenator", "cdpruner"]
SELECTING += ["vispruner", "dart"]


@pytest.mark.parametrize("name", SELECTING)
def test_select_after_prepare_traces_whole(name, monkeypatch):
    """``Method._select`` reads the host nowhere once ``_prepare`` has run: it traces into one
    graph (``aot_eager``: the capture without inductor's code generation, seconds) and picks as
    eager, for items with prompts of different lengths."""
    monkeypatch.setattr(otprune_module, "LAZY_ROW_DEVICES", frozenset())  # the CUDA path
    x = inputs()
    texts = [x["tokens"][0, :5] * 0.5, x["tokens"][1, 7:10] - 1.0]
    method = visprune.get_method(name, budget=K)
    ctx = Context(
        text=texts,
        cls_attention=x["attention"],
        scores=x["weights"],
        text_scores=[text.sum(-1) for text in texts],
    )
    method._check_context(ctx, B, D)
    ctx = method._prepare(ctx, x["tokens"])
    torch._dynamo.reset()
    eager = method._select(x["tokens"], K, ctx)
    compiled = torch.compile(method._select, fullgraph=True, backend="aot_eager")
    assert torch.equal(compiled(x["tokens"], K, ctx), eager)
