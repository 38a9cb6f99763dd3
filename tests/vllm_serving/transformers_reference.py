"""The reference every vLLM test holds the plugin to: requests through transformers with
``visprune.apply``, one at a time and greedy, and the comparison of vLLM's answers with it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

import visprune


@contextlib.contextmanager
def applied(model, settings: dict | None, **options) -> Iterator[object]:
    """``visprune.apply`` with ``settings`` (``method`` and its parameters, as the vLLM override
    takes them) and the adapter ``options``, removed on exit; ``None`` for ``settings=None``
    (the model unpruned)."""
    if settings is None:
        yield None
        return
    params = {k: v for k, v in settings.items() if k != "method"}
    with visprune.apply(model, settings["method"], **options, **params) as handle:
        yield handle


def greedy(model, inputs, steps: int) -> tuple[list[int], int, torch.Tensor]:
    """``generate`` on one request's ``inputs``: the ``steps`` answer ids, the prompt length and
    the first step's log-probabilities over the whole vocabulary (float64)."""
    with torch.no_grad():
        out = model.generate(
            **inputs,
            max_new_tokens=steps,
            do_sample=False,
            output_scores=True,
            return_dict_in_generate=True,
        )
    length = inputs["input_ids"].shape[1]
    answer = out.sequences[0, length:].tolist()
    return answer, length, torch.log_softmax(out.scores[0][0].double(), -1)


def assert_equal(served: list[dict], expected: list[dict]) -> None:
    """vLLM's answers equal the reference's, and each of its top log-probabilities is the
    reference's to 1e-3."""
    for number, (s, e) in enumerate(zip(served, expected, strict=True)):
        assert s["answer"] == e["answer"], number
        for token, logprob in s["logprobs"].items():
            assert abs(logprob - float(e["logprobs"][token])) < 1e-3, (number, token)
