"""Bad input raises an exception whose message names the method and the problem."""

from __future__ import annotations

import pytest
import torch

import visprune
from conftest import (
    METHOD_NAMES,
    NO_BUDGET,
    assert_valid,
    make_tokens,
    run,
    text_kwargs,
    uses_text,
)
from visprune.registry import UnknownNameError

TEXT_SPACE = [m for m in METHOD_NAMES if uses_text(m) and "query" not in visprune.METHODS[m].uses]


def _budget(name: str) -> int | None:
    return None if name in NO_BUDGET else 3


# --- tokens --------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_non_finite_tokens_name_method_and_count(method_name, dtype):
    """NaN / inf tokens raise ``ValueError`` with the method name and the count of bad values."""
    tokens = make_tokens((10, 4), dtype=dtype)
    tokens[0, 0] = float("nan")
    tokens[3, 1] = float("inf")
    tokens[7, 2] = float("-inf")
    extra = text_kwargs(method_name, 4)
    with pytest.raises(ValueError, match=rf"^{method_name}: tokens contain 3 non-finite value"):
        run(method_name, tokens, _budget(method_name), **extra)


def test_non_finite_tokens_in_one_batch_item(method_name):
    """One bad value in one item of a batch is caught (and counted) too."""
    tokens = make_tokens((3, 10, 4))
    tokens[2, 9, 3] = float("nan")
    extra = text_kwargs(method_name, 4)
    with pytest.raises(ValueError, match=rf"{method_name}: tokens contain 1 non-finite"):
        run(method_name, tokens, _budget(method_name), **extra)


@pytest.mark.parametrize("shape", [(8,), (1, 2, 8, 4), ()], ids=str)
def test_wrong_rank_names_method_and_shape(method_name, shape):
    """Tokens that are not ``(n, d)`` or ``(b, n, d)`` raise, showing the shape received."""
    tokens = torch.ones(shape)
    with pytest.raises(ValueError, match=rf"{method_name}: tokens must have shape .*got"):
        run(method_name, tokens, _budget(method_name))


@pytest.mark.parametrize("shape", [(0, 4), (2, 0, 4), (5, 0)], ids=str)
def test_empty_tokens_raise(method_name, shape):
    """``n == 0`` (or an empty feature axis) raises instead of returning nothing."""
    extra = text_kwargs(method_name, 4)
    with pytest.raises(ValueError, match=rf"{method_name}: tokens are empty"):
        run(method_name, torch.ones(shape), _budget(method_name), **extra)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int8, torch.bool], ids=str)
def test_non_float_tokens_raise(method_name, dtype):
    """Integer or boolean tokens raise, naming the dtype."""
    tokens = torch.ones(6, 4, dtype=dtype)
    with pytest.raises(ValueError, match=rf"{method_name}: tokens must be floating point.*{dtype}"):
        run(method_name, tokens, _budget(method_name))


def test_tokens_must_be_a_tensor(method_name):
    """A nested list is not silently converted."""
    with pytest.raises(ValueError, match=rf"{method_name}: tokens must be a torch.Tensor"):
        run(method_name, [[1.0, 2.0], [3.0, 4.0]], _budget(method_name))


@pytest.mark.parametrize("name", [m for m in METHOD_NAMES if m not in NO_BUDGET])
@pytest.mark.parametrize("budget", [0, -3, float("nan"), 1.5, "64", True])
def test_bad_budget_through_select(name, budget):
    """A bad budget given to ``select`` raises, naming the method."""
    extra = text_kwargs(name, 4)
    with pytest.raises(ValueError, match=rf"{name}: .*budget"):
        visprune.select(name, make_tokens((10, 4)), budget, **extra)


@pytest.mark.parametrize("name", [m for m in METHOD_NAMES if m not in NO_BUDGET])
def test_missing_budget_through_select(name):
    """A method built without a budget and called without one says how to pass it."""
    extra = text_kwargs(name, 4)
    with pytest.raises(ValueError, match=rf"{name}: no budget given"):
        visprune.select(name, make_tokens((10, 4)), **extra)


# --- text and query ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [m for m in METHOD_NAMES if uses_text(m)])
def test_non_finite_text_names_method_and_count(name):
    """NaN / inf in the prompt embeddings raise with the method name and the count."""
    text = text_kwargs(name, 4)["text"].clone()
    text[0, 0] = float("nan")
    text[1, 1] = float("inf")
    with pytest.raises(ValueError, match=rf"{name}: text embeddings contain 2 non-finite"):
        visprune.select(name, make_tokens((10, 4)), 3, text=text)


@pytest.mark.parametrize("name", [m for m in METHOD_NAMES if uses_text(m)])
def test_non_finite_text_in_a_list(name):
    """A bad value in one text of a per-item list is caught."""
    texts = text_kwargs(name, 4, 2, shared=False)["text"]
    texts[1] = texts[1].clone()
    texts[1][-1, -1] = float("-inf")
    with pytest.raises(ValueError, match=rf"{name}: text embeddings contain 1 non-finite"):
        visprune.select(name, make_tokens((2, 10, 4)), 3, text=texts)


@pytest.mark.parametrize("name", [m for m in METHOD_NAMES if uses_text(m)])
@pytest.mark.parametrize(
    "text", [torch.ones(4), torch.ones(2, 3, 4), torch.ones(3, 4, dtype=torch.int64)], ids=str
)
def test_malformed_text_raises(name, text):
    """Text that is not a float ``(m, d_t)`` tensor raises."""
    with pytest.raises(ValueError, match=rf"{name}: each text must be a float tensor"):
        visprune.select(name, make_tokens((10, 4)), 3, text=text)


def test_rediprune_without_text_says_what_to_pass():
    """ReDiPrune needs the prompt: the message says it and how to pass text or a query."""
    with pytest.raises(ValueError, match=r"rediprune is text-conditioned.*text=.*query="):
        visprune.select("rediprune", make_tokens((10, 4)), 3)


def test_rediprune_without_text_even_when_keeping_all():
    """The missing prompt is reported even for a budget that keeps every token."""
    with pytest.raises(ValueError, match=r"rediprune is text-conditioned"):
        visprune.select("rediprune", make_tokens((10, 4)), 10)


def test_rediprune_query_checks():
    """A non-finite query, a wrong rank or a row count unlike the batch raise."""
    tokens = make_tokens((2, 10, 4))
    bad = torch.ones(4)
    bad[2] = float("nan")
    with pytest.raises(ValueError, match=r"rediprune: query contain 1 non-finite"):
        visprune.select("rediprune", tokens, 3, query=bad)
    with pytest.raises(ValueError, match=r"rediprune: query must be a tensor"):
        visprune.select("rediprune", tokens, 3, query=torch.ones(1, 2, 4))
    with pytest.raises(ValueError, match=r"rediprune: query has 3 rows but the batch has 2"):
        visprune.select("rediprune", tokens, 3, query=torch.ones(3, 4))


@pytest.mark.parametrize("name", TEXT_SPACE)
def test_text_width_mismatch_raises(name):
    """Text in another space than the tokens is refused, showing both widths."""
    with pytest.raises(ValueError, match=rf"{name}: text width 5 differs from the token width 4"):
        visprune.select(name, make_tokens((10, 4)), 3, text=torch.ones(2, 5))


@pytest.mark.parametrize("name", TEXT_SPACE)
def test_text_width_mismatch_raises_in_a_list(name):
    """One mismatched text in a per-item list is refused."""
    texts = [torch.ones(2, 4), torch.ones(2, 6)]
    with pytest.raises(ValueError, match=rf"{name}: text width 6 differs"):
        visprune.select(name, make_tokens((2, 10, 4)), 3, text=texts)


@pytest.mark.parametrize("name", TEXT_SPACE)
def test_text_width_mismatch_raises_whatever_the_budget(name):
    """Validation does not depend on the budget: a mismatch raises even when keeping all."""
    with pytest.raises(ValueError, match=rf"{name}: text width 5 differs"):
        visprune.select(name, make_tokens((10, 4)), 10, text=torch.ones(2, 5))


@pytest.mark.parametrize("name", [m for m in METHOD_NAMES if uses_text(m)])
def test_text_list_length_must_match_batch(name):
    """A list of texts whose length differs from the batch raises, giving both lengths."""
    texts = text_kwargs(name, 4, 2, shared=False)["text"]
    with pytest.raises(ValueError, match=r"list of 2 tensors but the batch has 3 items"):
        visprune.select(name, make_tokens((3, 10, 4)), 3, text=texts)


@pytest.mark.parametrize("name", [m for m in METHOD_NAMES if uses_text(m)])
def test_text_list_length_error_names_the_method(name):
    """The batch/text-list mismatch message names the method, like every other input error."""
    texts = text_kwargs(name, 4, 2, shared=False)["text"]
    with pytest.raises(ValueError, match=rf"^{name}\b"):
        visprune.select(name, make_tokens((3, 10, 4)), 3, text=texts)


@pytest.mark.parametrize(
    "name", [m for m in METHOD_NAMES if "query" not in visprune.METHODS[m].uses]
)
def test_query_for_a_method_without_one(name):
    """Passing ReDiPrune's pooled query to another method raises instead of ignoring it."""
    with pytest.raises(ValueError, match=rf"{name} takes no query"):
        run(name, make_tokens((10, 4)), _budget(name), query=torch.ones(4))


# --- names and parameters ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("typo", "suggestion"),
    [
        ("otprun", "otprune"),
        ("divprun", "divprune"),
        ("redi_prune", "rediprune"),
        ("unifrom", "uniform"),
    ],
)
def test_unknown_method_suggests_closest(typo, suggestion):
    """An unknown name is a ``KeyError`` listing the names and suggesting the closest."""
    with pytest.raises(KeyError) as info:
        visprune.select(typo, make_tokens((10, 4)), 3)
    assert isinstance(info.value, UnknownNameError)
    message = str(info.value)
    assert f"unknown method {typo!r}" in message
    assert "available: " + ", ".join(visprune.list_methods()) in message
    assert f"Did you mean {suggestion!r}?" in message


def test_unknown_method_without_close_match():
    """A name close to nothing lists the names without a suggestion."""
    with pytest.raises(KeyError, match=r"unknown method 'zzzzzz'; available: divprune") as info:
        visprune.get_method("zzzzzz")
    assert "Did you mean" not in str(info.value)


def test_unknown_method_is_also_a_value_error():
    """``except ValueError`` catches an unknown name as well (it is a bad argument value)."""
    with pytest.raises(ValueError, match="unknown method"):
        visprune.get_method("nope")


def test_method_must_be_name_or_instance():
    """Anything but a name or a ``Method`` is refused."""
    with pytest.raises(ValueError, match=r"method must be a name or a Method instance, got 42"):
        visprune.get_method(42)


@pytest.mark.parametrize(
    ("name", "params", "accepted"),
    [
        ("divprune", {"gamma": 1}, "budget"),
        ("otprune", {"alpha": 1}, "budget, gamma"),
        ("rediprune", {"gamma": 1, "beta": 2}, "budget, alpha, tau"),
        ("random", {"sed": 1}, "budget, seed"),
    ],
)
def test_unknown_parameter_lists_accepted(name, params, accepted):
    """An unknown hyperparameter raises, naming it and listing what the method accepts."""
    unknown = ", ".join(sorted(params))
    pattern = rf"{name} has no parameter\(s\) {unknown}; it accepts: {accepted}\."
    with pytest.raises(ValueError, match=pattern):
        visprune.select(name, make_tokens((10, 4)), 3, text=torch.ones(2, 4), **params)


def test_unknown_parameter_on_an_instance():
    """Copying an instance with an unknown parameter raises the same way."""
    with pytest.raises(ValueError, match=r"otprune has no parameter\(s\) tau"):
        visprune.get_method(visprune.OTPrune(budget=4), tau=0.1)


@pytest.mark.parametrize(
    ("name", "param", "value"),
    [
        ("otprune", "gamma", 0),
        ("otprune", "gamma", -0.01),
        ("otprune", "gamma", float("nan")),
        ("otprune", "gamma", float("inf")),
        ("otprune", "gamma", "0.01"),
        ("rediprune", "alpha", -0.5),
        ("rediprune", "alpha", float("nan")),
        ("rediprune", "tau", float("nan")),
        ("rediprune", "tau", None),
        ("resprune", "alpha", -1.0),
        ("resprune", "alpha", True),
        ("random", "seed", 1.5),
        ("random", "seed", "3"),
        ("random", "seed", True),
        ("random", "seed", None),
    ],
)
def test_bad_hyperparameters(name, param, value):
    """Out-of-range or mistyped hyperparameters raise at construction, naming method and value."""
    pattern = rf"{name}: {param} must be .*got {value!r}".replace("(", r"\(").replace(")", r"\)")
    with pytest.raises(ValueError, match=pattern):
        visprune.get_method(name, budget=4, **{param: value})
    with pytest.raises(ValueError, match=pattern):
        visprune.select(name, make_tokens((10, 4)), 3, text=torch.ones(2, 4), **{param: value})


def test_bad_hyperparameter_on_instance_copy():
    """``get_method(instance, ...)`` validates the new values too."""
    with pytest.raises(ValueError, match=r"otprune: gamma must be a finite number > 0.0, got 0"):
        visprune.get_method(visprune.OTPrune(budget=4), gamma=0)


@pytest.mark.parametrize("budget", [4, 0.5, 1.0, 10])
def test_keepall_refuses_a_budget(budget):
    """``keepall`` keeps everything: any budget is a mistake and says so."""
    with pytest.raises(
        ValueError, match=rf"keepall keeps every token and takes no budget.*{budget}"
    ):
        visprune.select("keepall", make_tokens((10, 4)), budget)
    with pytest.raises(ValueError, match="keepall keeps every token and takes no budget"):
        visprune.get_method("keepall", budget=budget)


def test_keepall_method_refuses_a_smaller_count():
    """``KeepAll().select(tokens, k)`` with ``k < n`` cannot silently drop tokens."""
    with pytest.raises(ValueError, match=r"keepall keeps every token"):
        visprune.KeepAll().select(make_tokens((10, 4)), 4)


def test_large_finite_tokens_are_not_reported_as_non_finite(method_name):
    """Finite float32 tokens whose sum overflows are valid input: no error, valid indices."""
    tokens = make_tokens((10, 4)).sign() * 3e38
    extra = text_kwargs(method_name, 4)
    kept = run(method_name, tokens, _budget(method_name), **extra)
    k = 10 if method_name in NO_BUDGET else 3
    assert_valid(kept, 10, k, None, tokens.device)


# --- finite input outside float32 ----------------------------------------------------------------


@pytest.mark.parametrize("name", [m for m in METHOD_NAMES if m not in NO_BUDGET])
def test_float64_tokens_beyond_float32_range_are_not_garbage(name):
    """float64 tokens that overflow float32 raise ``ValueError`` or still give valid indices.

    The selection upcasts to float32; 1e300 is finite in float64 but inf in float32.
    """
    tokens = make_tokens((8, 4), dtype=torch.float64)
    tokens[0, 0] = 1e300
    extra = text_kwargs(name, 4)
    try:
        kept = visprune.select(name, tokens, 4, **extra)
    except ValueError as error:
        assert name in str(error)
    else:
        assert_valid(kept, 8, 4, None, tokens.device)


def test_rediprune_query_overflowing_width_matching_is_not_garbage():
    """A finite query whose width-matching average overflows float32 gives valid indices.

    ``match_query_width`` averages pairs of ``-3e38`` into ``-inf``; the relevance becomes NaN.
    """
    tokens = make_tokens((5, 1))
    try:
        kept = visprune.select("rediprune", tokens, 2, query=torch.tensor([-3e38, -3e38]))
    except ValueError as error:
        assert "rediprune" in str(error)
    else:
        assert_valid(kept, 5, 2, None, tokens.device)
