"""The public cores of :mod:`visprune.functional`: what the methods pick, called directly.

A core is the method's selection without the checks: on valid float32 tokens it picks exactly
what ``Method.select`` picks. The package imports no model code and nothing from the methods.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

import visprune
import visprune.functional as F
from conftest import make_tokens
from visprune.functional.divprune import cosine_distance

FUNCTIONAL = Path(F.__file__).parent

#: Packages a pure core may not import (relative imports resolved against visprune.functional).
FORBIDDEN = ("visprune.methods", "visprune.adapters", "visprune.integrations", "transformers")


def texts(batch: int, d: int) -> list[torch.Tensor]:
    """Prompts of different lengths per item, one of them empty."""
    return [make_tokens((rows, d), seed=10 + rows) for rows in (5, 0, 3)[:batch]]


@pytest.mark.parametrize(
    ("name", "core"),
    [
        ("divprune", lambda x, k, t: F.divprune(x, k)),
        ("otprune", lambda x, k, t: F.otprune(x, k, 0.05)),
        ("resprune", lambda x, k, t: F.resprune(x, k, t, 0.7)),
        ("trimtokenator", lambda x, k, t: F.trimtokenator(x, k, t)),
    ],
)
def test_core_picks_what_the_method_picks(name, core):
    tokens = make_tokens((3, 40, 16), seed=3)
    params = {"gamma": 0.05} if name == "otprune" else {"alpha": 0.7} if name == "resprune" else {}
    text = texts(3, 16)
    for k in (1, 7, 39):
        want = visprune.select(name, tokens, k, text=text, **params)
        got = core(tokens, k, text)
        assert got.dtype == torch.int64 and got.shape == (3, k)
        assert torch.equal(got, want), (name, k)


@pytest.mark.parametrize("tau", [0.0, 0.05, -1.0])
def test_rediprune_core_with_the_pooled_query_picks_what_the_method_picks(tau):
    tokens = make_tokens((3, 40, 16), seed=4)
    prompts = [make_tokens((rows, 24), seed=rows) for rows in (6, 1, 0)]
    query = F.match_query_width(F.pool_text_queries(prompts), 16)
    for k in (1, 6, 25):
        want = visprune.select("rediprune", tokens, k, text=prompts, alpha=0.3, tau=tau)
        assert torch.equal(F.rediprune(tokens, query, k, 0.3, tau), want), (tau, k)


def test_greedy_order_holds_the_same_picks_first_pick_first():
    """``sort=False`` gives the greedy order: the same set, and DivPrune's first pick is the
    token farthest from its nearest neighbour."""
    tokens = make_tokens((2, 30, 8), seed=5)
    ordered = F.divprune(tokens, 9, sort=False)
    assert torch.equal(ordered.sort(dim=-1).values, F.divprune(tokens, 9))
    distance = cosine_distance(tokens)
    nearest = distance.topk(2, dim=-1, largest=False).values[..., 1]
    assert torch.equal(ordered[:, 0], nearest.argmax(dim=-1))
    for core in (F.otprune, F.resprune, F.trimtokenator):
        picks = core(tokens, 9, sort=False)
        assert torch.equal(picks.sort(dim=-1).values, core(tokens, 9))


def imported_modules(path: Path) -> set[str]:
    """Absolute names of the modules ``path`` imports (relative ones resolved)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = "visprune.functional".split(".")
            if node.level:
                base = base[: len(base) - node.level + 1]
                names.add(".".join([*base, node.module] if node.module else base))
            else:
                names.add(node.module or "")
    return names


def test_functional_imports_no_method_adapter_or_model_code():
    files = sorted(FUNCTIONAL.glob("*.py"))
    assert len(files) > 10
    for path in files:
        for module in imported_modules(path):
            assert not module.startswith(FORBIDDEN), f"{path.name} imports {module}"


def test_every_public_core_documents_its_shapes_and_returns():
    for name in F.__all__:
        doc = getattr(F, name).__doc__
        assert "Parameters\n" in doc and "Returns\n" in doc and "``(" in doc, name
