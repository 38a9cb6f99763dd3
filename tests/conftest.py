"""Shared helpers for the method tests.

Every test that should cover all selection methods parametrizes over :data:`METHOD_NAMES`, taken
from ``visprune.list_methods()``, so a newly registered method enters the matrix automatically.
The helpers below know the few per-method differences in how a method is called (``keepall`` takes
no budget, ``rediprune`` needs text, ``resprune``/``trimtokenator`` take optional text of the
tokens' width).
"""

from __future__ import annotations

import importlib.util
import numbers

import pytest
import torch
from torch import Tensor

import visprune
from visprune.registry import METHODS

# The vLLM serving tests run in their own virtualenv (``make test-vllm``), where vLLM is installed.
collect_ignore = [] if importlib.util.find_spec("vllm") else ["vllm_serving"]

#: Every registered method that selects (``visprune.select``), in registration order.
METHOD_NAMES: list[str] = [name for name in visprune.list_methods() if not METHODS[name].merges]

#: Registered methods that merge tokens (``Method.reduce``) instead of selecting.
MERGING_NAMES: list[str] = [name for name in visprune.list_methods() if METHODS[name].merges]

#: Methods whose tie-breaking follows their own index structure, not "lowest index first"
#: (VisPruner splits the residual alternately, so of identical tokens it keeps every other one).
STRUCTURED_TIES: frozenset[str] = frozenset({"vispruner"})

#: Methods that keep every token and take no budget.
NO_BUDGET: frozenset[str] = frozenset({"keepall"})

#: Methods whose picks depend only on positions, not on token values.
INDEX_BASED: frozenset[str] = frozenset({"random", "uniform", "keepall"})

#: Methods that prune inside the language model: ``select`` needs the per-token ``scores`` their
#: layer measures (and DART the text's); :func:`run` derives stand-ins from the tokens.
LAYER_STAGE: frozenset[str] = frozenset(m for m in METHOD_NAMES if METHODS[m].stage == "layer")

#: Devices to run the device-sensitive tests on.
DEVICES: list[str] = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def method_class(name: str) -> type:
    """The registered class of ``name``."""
    return METHODS[name]


def uses_text(name: str) -> bool:
    """Whether ``name`` reads ``text`` when given one."""
    return "text" in method_class(name).uses


def needs_text(name: str) -> bool:
    """Whether ``name`` cannot run without ``text`` (or a query)."""
    return "text" in method_class(name).requires


def text_width(name: str, d: int) -> int:
    """The prompt-embedding width to feed ``name`` for tokens of width ``d``.

    Methods that pool the prompt into one query (ReDiPrune) accept any width and match it to the
    vision width, so they get ``3 d``; methods comparing tokens and text in one space get ``d``.
    """
    return 3 * d if "query" in method_class(name).uses else d


def make_tokens(
    shape: tuple[int, ...], seed: int = 0, dtype: torch.dtype = torch.float32
) -> Tensor:
    """Seeded standard-normal tokens of ``shape``, cast to ``dtype``."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator).to(dtype)


def make_text(name: str, d: int, rows: int = 5, seed: int = 1) -> Tensor:
    """Seeded prompt embeddings ``(rows, text_width(name, d))`` for ``name``."""
    return make_tokens((rows, text_width(name, d)), seed=seed)


def text_kwargs(name: str, d: int, batch: int | None = None, *, shared: bool = True, seed: int = 1):
    """``select`` keyword arguments carrying prompt text, when ``name`` uses text.

    Parameters
    ----------
    name : str
        Method name.
    d : int
        Token width.
    batch : int, optional
        Batch size of ``(b, n, d)`` tokens; ``None`` for ``(n, d)``.
    shared : bool
        For a batch: one tensor shared by all items (``True``) or a list of ``batch`` tensors.
    seed : int
        Seed of the first text.

    Returns
    -------
    dict
        ``{}`` for methods without text, else ``{"text": ...}``.
    """
    if not uses_text(name):
        return {}
    if batch is None or shared:
        return {"text": make_text(name, d, seed=seed)}
    return {"text": [make_text(name, d, rows=3 + i, seed=seed + i) for i in range(batch)]}


def needs_cls_attention(name: str) -> bool:
    """Whether ``name`` cannot run without the vision tower's CLS attention."""
    return "cls_attention" in method_class(name).requires


def cls_attention_of(tokens: Tensor, heads: int = 3, seed: int = 17) -> Tensor:
    """A CLS attention row per head made from the tokens themselves: ``(..., heads, n)``.

    ``softmax(4 cos(x_i, u_h))`` over the tokens for fixed seeded directions ``u_h``, so it
    moves with the tokens when they are permuted, ties when they are identical, and does not
    change when they are scaled: the method-matrix invariants hold for it as for the tokens.
    """
    generator = torch.Generator().manual_seed(seed)
    directions = torch.randn(heads, tokens.shape[-1], generator=generator).to(tokens.device)
    unit = tokens.float() / tokens.float().norm(dim=-1, keepdim=True).clamp_min(1e-30)
    scores = unit @ (directions / directions.norm(dim=-1, keepdim=True)).T  # (..., n, heads)
    return (4 * scores).softmax(dim=-2).transpose(-1, -2)


def layer_scores(tokens: Tensor) -> Tensor:
    """Stand-in layer scores of ``(..., n, d)`` tokens: ``(..., n)``, a function of each token
    alone (so they follow the tokens through permutations, scalings and dtype casts)."""
    tokens = tokens.float()
    return (tokens / tokens.shape[-1]).sum(-1)  # a mean that cannot overflow


def run(name: str, tokens: Tensor, budget: object = None, **kwargs) -> Tensor:
    """``visprune.select`` with the budget left out for methods that take none, a CLS attention
    made from the tokens (:func:`cls_attention_of`) for methods that need one, and stand-in
    scores (:func:`layer_scores`) for layer-stage methods when none are given."""
    well_formed = isinstance(tokens, Tensor) and tokens.dim() in (2, 3) and 0 not in tokens.shape
    if needs_cls_attention(name) and "cls_attention" not in kwargs and well_formed:
        kwargs["cls_attention"] = cls_attention_of(tokens)
    if isinstance(tokens, Tensor) and tokens.dim() and "scores" not in kwargs:
        kwargs = layer_kwargs(name, tokens, **kwargs)
    if name in NO_BUDGET:
        return visprune.select(name, tokens, **kwargs)
    return visprune.select(name, tokens, budget, **kwargs)


def layer_kwargs(name: str, tokens: Tensor, **kwargs) -> dict:
    """``kwargs`` plus the stand-in scores that :func:`run` adds for a layer-stage method."""
    if name not in LAYER_STAGE:
        return kwargs
    extra = dict(kwargs, scores=layer_scores(tokens))
    text = kwargs.get("text")
    if text is not None:
        many = isinstance(text, list)
        extra["text_scores"] = [layer_scores(t) for t in text] if many else layer_scores(text)
    return extra


def expected_k(name: str, budget: object, n: int) -> int:
    """Tokens kept per item by the budget rules of docs/methods/index.md."""
    if name in NO_BUDGET:
        return n
    if isinstance(budget, numbers.Integral):
        return min(n, int(budget))
    return min(n, max(1, round(float(budget) * n)))


def assert_valid(indices: Tensor, n: int, k: int, batch: int | None, device: torch.device) -> None:
    """Check the output contract: int64, shape, unique, strictly ascending, in range, device."""
    assert indices.dtype == torch.int64
    assert indices.device == device
    expected_shape = (k,) if batch is None else (batch, k)
    assert tuple(indices.shape) == expected_shape
    rows = indices.reshape(-1, k)
    assert bool((rows >= 0).all()) and bool((rows < n).all())
    if k > 1:
        assert bool((rows.diff(dim=-1) > 0).all()), f"not strictly ascending: {rows.tolist()}"


def assert_valid_indices(indices: Tensor, n: int, k: int) -> None:
    """``assert_valid`` for a 1-D result on the CPU."""
    assert_valid(indices, n, k, None, torch.device("cpu"))


@pytest.fixture(params=METHOD_NAMES)
def method_name(request: pytest.FixtureRequest) -> str:
    """Each registered method name in turn."""
    return request.param


def refused(main, argv, capsys) -> str:
    """Run the command line ``main(argv)``: it must exit with status 2 and an error line, no
    traceback. Returns what it wrote to stderr."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def spy_positions(monkeypatch, module) -> list:
    """Record the ``positions`` option of every ``module.apply(...)`` call (still applied)."""
    seen = []
    original_apply = module.apply

    def spy(model, method, **kwargs):
        seen.append(kwargs.get("positions"))
        return original_apply(model, method, **kwargs)

    monkeypatch.setattr(module, "apply", spy)
    return seen
