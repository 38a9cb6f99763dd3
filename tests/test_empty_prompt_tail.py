"""A text-conditioned method on a prompt with nothing after the image says so, never silently."""

from __future__ import annotations

import warnings

import pytest
import torch

import visprune
from tiny_vlms import collate, sample, tiny


@pytest.fixture(scope="module")
def model():
    return tiny("llava")


def _prompt(model, text_after: bool) -> dict:
    one = sample("llava", model, suffix=0)
    if not text_after:  # drop the separator token: the prompt ends with the image
        one["input_ids"] = one["input_ids"][:-1]
    return collate([one])


@pytest.mark.parametrize("method", ["rediprune", "resprune", "trimtokenator", "cdpruner"])
def test_nothing_after_the_image_warns(model, method):
    with visprune.apply(model, method, budget=2), torch.no_grad():
        with pytest.warns(UserWarning, match="no text after its last image"):
            model(**_prompt(model, text_after=False))


@pytest.mark.parametrize("method", ["rediprune", "divprune"])
def test_text_after_the_image_or_a_method_without_text_does_not_warn(model, method):
    with visprune.apply(model, method, budget=2), torch.no_grad():
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message=".*no text after its last image.*")
            model(**_prompt(model, text_after=method == "rediprune"))
