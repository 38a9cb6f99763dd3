"""The public cores of :mod:`visprune.functional`: what the methods pick, called directly.

A core is the method's selection without the value checks (finiteness, scale): on valid float32
tokens it picks exactly what ``Method.select`` picks, and it refuses only a wrong shape, dtype or
``k``. The package imports no model code and nothing from the methods.
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


#: The ``(b, n, d)`` cores, each called as ``core(tokens, k)`` (ReDiPrune with a query that fits
#: ``d = 8``).
TOKEN_CORES = {
    "divprune": F.divprune,
    "otprune": F.otprune,
    "resprune": F.resprune,
    "trimtokenator": F.trimtokenator,
    "rediprune": lambda x, k: F.rediprune(x, torch.ones(len(x), 8), k),
}


@pytest.mark.parametrize("name", sorted(TOKEN_CORES))
@pytest.mark.parametrize(
    ("k", "wrong"),
    [
        (0, "must be >= 1, got 0"),
        (-3, "must be >= 1"),
        (10, "below the 10 tokens"),
        (20, "below the 10 tokens per item, got 20"),
        (2.0, "must be an int"),
        (True, "must be an int"),
    ],
)
def test_a_core_refuses_a_k_the_methods_never_pass(name, k, wrong):
    """``k`` outside ``[1, n)`` used to give duplicate indices (``k > n``) or a torch error."""
    with pytest.raises(ValueError, match=f"^{name}: ") as error:
        TOKEN_CORES[name](make_tokens((1, 10, 8), seed=6), k)
    assert wrong in str(error.value)


@pytest.mark.parametrize("name", sorted(TOKEN_CORES))
@pytest.mark.parametrize(
    ("tokens", "wrong"),
    [
        (torch.ones(10, 8), "must be (b, n, d), got 2-D (10, 8); for one image add a batch"),
        (torch.ones(1, 2, 10, 8), "must be (b, n, d), got 4-D"),
        (torch.ones(1, 10, 8, dtype=torch.long), "must be floating, got torch.int64"),
        ([[[1.0] * 8] * 10], "must be a floating tensor (b, n, d), got list"),
    ],
)
def test_a_core_refuses_tokens_that_are_not_a_float_batch(name, tokens, wrong):
    with pytest.raises(ValueError, match=f"^{name}: ") as error:
        TOKEN_CORES[name](tokens, 3)
    assert wrong in str(error.value)


@pytest.mark.parametrize("query", [torch.ones(8), torch.ones(2, 8), torch.ones(1, 6), None])
def test_rediprune_core_refuses_a_query_that_is_not_one_row_per_item(query):
    with pytest.raises(ValueError, match=r"^rediprune: query must be a floating tensor \(1, 8\)"):
        F.rediprune(make_tokens((1, 10, 8), seed=7), query, 3)


def test_every_k_the_methods_pass_is_accepted():
    """The check lets through exactly the ``1 <= k < n`` of ``Method.select``."""
    tokens = make_tokens((2, 10, 8), seed=8)
    for name, core in TOKEN_CORES.items():
        for k in (1, 9):
            assert core(tokens, k).shape == (2, k), (name, k)
