"""``compile=True``: the selection core runs as one ``torch.compile(fullgraph=True)`` graph.

Most tests compile with a recording backend: torch's graph capture (where graph breaks are
found) runs in full, but the captured graph runs as is instead of through Inductor's code
generation, which takes seconds per shape on a CPU. One test runs Inductor itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch
import torch._dynamo

import visprune
import visprune.compiled as compiled
from conftest import METHOD_NAMES, NO_BUDGET, make_tokens, run, text_kwargs
from tiny_vlms import GENERATE, inputs, tiny
from visprune.methods import Method

#: Cores that break the graph today (a host read or a data-dependent branch in the loop); a
#: strict xfail reports when one compiles.
NOT_YET_COMPILABLE = frozenset({"fastv", "pdrop"})

#: Cores that are not greedy loops and stay eager: Random draws on a CPU generator that it
#: creates per call (so a result never depends on the device's random state).
EAGER_ONLY = frozenset({"random"})

COMPILABLE = [
    pytest.param(name, marks=pytest.mark.xfail(strict=True, reason="its core breaks the graph"))
    if name in NOT_YET_COMPILABLE
    else name
    for name in METHOD_NAMES
    if name not in NO_BUDGET | EAGER_ONLY
]


@pytest.fixture(autouse=True)
def graphs(monkeypatch):
    """The graphs compiled during a test (recording backend); compiled cores are forgotten
    before and after, so every test starts from an empty cache."""
    captured = []

    def record(graph, example_inputs):
        captured.append(graph)
        return graph.forward

    monkeypatch.setattr(compiled, "BACKEND", record)
    monkeypatch.setattr(compiled, "_CORES", {})
    torch._dynamo.reset()
    yield captured
    torch._dynamo.reset()


#: Cores that key the graph on the identity of the text tensors (``functional/text.py``
#: computes a shared prompt once by ``id(text)``), so new tensors of the same shapes compile
#: again; a strict xfail reports when they no longer do.
TEXT_IDENTITY: frozenset[str] = frozenset()

REUSED = [
    pytest.param(name, marks=pytest.mark.xfail(strict=True, reason="keys on id(text)"))
    if name in TEXT_IDENTITY
    else name
    for name in METHOD_NAMES
    if name not in NO_BUDGET | EAGER_ONLY | NOT_YET_COMPILABLE
]


def batch_inputs(name: str, n: int = 24) -> dict:
    """A batch of two images of ``n`` tokens with a text of their own each, as fresh tensors."""
    return dict(tokens=make_tokens((2, n, 16), seed=3), **text_kwargs(name, 16, 2, shared=False))


def batch_call(name: str, k: int, *, n: int = 24, compile=False):
    """Select ``k`` of ``n`` tokens of :func:`batch_inputs`."""
    return run(name, budget=k, compile=compile, **batch_inputs(name, n))


@pytest.mark.parametrize("name", COMPILABLE)
def test_compiled_picks_equal_eager_and_compile_once_per_shape(name, graphs):
    """Same picks as eager; one graph per (hyperparameters, shapes); a repeat reuses it."""
    given = batch_inputs(name)
    assert torch.equal(run(name, budget=4, compile=True, **given), run(name, budget=4, **given))
    assert len(graphs) == 1
    run(name, budget=4, compile=True, **given)
    assert len(graphs) == 1, "a repeated call compiled again"
    assert torch.equal(batch_call(name, 5, n=20, compile=True), batch_call(name, 5, n=20))
    assert len(graphs) == 2


@pytest.mark.parametrize("name", REUSED)
def test_new_tensors_of_the_same_shapes_reuse_the_graph(name, graphs):
    """Each call of a model brings new tensors: the graph is keyed on shapes, not objects."""
    batch_call(name, 4, compile=True)
    batch_call(name, 4, compile=True)
    assert len(graphs) == 1


@dataclass
class TiltedNorms(Method):
    """Keep the ``k`` largest ``|x_i| + tilt * i``: a core with a hyperparameter."""

    tilt: float = 0.0

    name: ClassVar[str] = "tiltednorms"

    def _select(self, tokens, k, ctx):
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        return (tokens.norm(dim=-1) + self.tilt * positions).topk(k, dim=-1).indices


def test_new_hyperparameters_compile_again(graphs):
    tokens = make_tokens((1, 20, 8), seed=5)
    for tilt in (0.0, 0.0, 5.0):
        method = TiltedNorms(budget=4, tilt=tilt)
        eager = visprune.select(method, tokens)
        assert torch.equal(visprune.select(method, tokens, compile=True), eager)
    assert len(graphs) == 2
    assert not torch.equal(eager, visprune.select(TiltedNorms(budget=4), tokens))


@pytest.mark.parametrize("name", sorted(EAGER_ONLY | NOT_YET_COMPILABLE))
def test_a_core_that_breaks_the_graph_raises_naming_the_method(name, graphs):
    """Never a silent eager run: the error names the method, the place and the way out."""
    try:
        batch_call(name, 4, compile=True)
    except compiled.SelectionNotCompilable as error:
        message = str(error)
        assert message.startswith(f"{name}'s selection cannot run as one torch.compile")
        assert "compile=False" in message and ".py:" in message, message
    else:
        assert name in NOT_YET_COMPILABLE - EAGER_ONLY, f"{name} compiled"
        pytest.xfail(f"{name} compiles now: move it out of NOT_YET_COMPILABLE")
    assert not graphs


def test_past_the_recompile_limit_raises(monkeypatch):
    monkeypatch.setattr(compiled, "RECOMPILE_LIMIT", 2)
    batch_call("divprune", 3, compile=True)
    batch_call("divprune", 4, compile=True)
    with pytest.raises(compiled.SelectionNotCompilable, match="compiled for 2 different shapes"):
        batch_call("divprune", 5, compile=True)


@pytest.mark.parametrize("value", ["fast", 1, "yes"])
def test_a_bad_compile_value_is_refused(value):
    with pytest.raises(ValueError, match=r"compile must be True, False or a torch\.compile mode"):
        visprune.select("divprune", make_tokens((12, 4)), 3, compile=value)


def test_inductor_compiles_divprune(monkeypatch, graphs):
    """The real backend: Inductor's generated code picks what eager picks (k small: the loop
    is unrolled, so compile time grows with k)."""
    monkeypatch.setattr(compiled, "BACKEND", "inductor")
    tokens = make_tokens((2, 12, 8), seed=9)
    assert torch.equal(
        visprune.select("divprune", tokens, 2, compile=True), visprune.select("divprune", tokens, 2)
    )


def test_apply_with_compile_generates_as_eager(graphs):
    """Through a model: the same tokens kept and the same text generated, from one graph for
    the batch's images."""
    model = tiny("llava")
    batch = inputs("llava", model, batch=2)
    with torch.no_grad(), visprune.apply(model, "divprune", budget=2) as handle:
        eager_text = model.generate(**batch, **GENERATE)
        eager_kept = [selection.kept for selection in handle.selections]
    with torch.no_grad(), visprune.apply(model, "divprune", budget=2, compile=True) as handle:
        compiled_text = model.generate(**batch, **GENERATE)
        compiled_kept = [selection.kept for selection in handle.selections]
    assert torch.equal(compiled_text, eager_text)
    assert all(map(torch.equal, compiled_kept, eager_kept)) and len(eager_kept) == 2
    assert len(graphs) == 1


def test_apply_refuses_compile_for_a_merging_method():
    model = tiny("llava")
    with pytest.raises(ValueError, match="visionzip merges tokens"):
        visprune.apply(model, "visionzip", budget=2, compile=True)
    assert visprune.api.active_handle(model) is None


def test_apply_raises_at_the_call_for_a_core_that_breaks_the_graph():
    model = tiny("llava")
    batch = inputs("llava", model)
    with torch.no_grad(), visprune.apply(model, "random", budget=2, compile=True):
        with pytest.raises(compiled.SelectionNotCompilable, match="random's selection"):
            model(**batch)
