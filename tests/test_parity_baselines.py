"""Parity of CDPruner, VisionZip, VisPruner and DART with their published code.

The vectors (``tests/data/baselines``, README beside them) were produced by the published
selection code: ``baselines_public`` on image-sized inputs, ``baselines_edge`` on small images,
duplicated tokens, exact ties and fractional ``k * important_ratio``. ``check`` says what a case
must reproduce.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from visprune import functional as F

DATA = Path(__file__).parent / "data" / "baselines"
SETS = ("baselines_public", "baselines_edge")
VECTORS = {name: np.load(DATA / f"{name}.npz") for name in SETS}
CASES = [
    {**case, "set": name}
    for name in SETS
    for case in json.loads((DATA / f"{name}.json").read_text())["cases"]
]


def case_id(case: dict) -> str:
    prefix = "" if case["set"] == "baselines_public" else "edge-"
    return f"{prefix}{case['method']}-{case['case']}-{case['input_dtype']}"


def of(method: str) -> list:
    return [pytest.param(c, id=case_id(c)) for c in CASES if c["method"] == method]


def inputs(case: dict) -> dict[str, torch.Tensor]:
    dtype = torch.float64 if case["input_dtype"] == "float64" else torch.float32
    vectors = VECTORS[case["set"]]
    return {
        role: torch.from_numpy(vectors[key]).to(dtype) if vectors[key].dtype.kind == "f" else key
        for role, key in case["inputs"].items()
    }


def output(case: dict, name: str) -> np.ndarray:
    return VECTORS[case["set"]][case["outputs"][name]]


def assert_distinct(kept: torch.Tensor, count: int) -> None:
    assert kept.dtype == torch.int64 and kept.shape[-1] == count
    for row in kept:
        assert len(set(row.tolist())) == count
        assert torch.equal(row, row.sort().values)


@pytest.mark.parametrize("case", of("cdpruner"))
def test_cdpruner(case):
    given = inputs(case)
    k = case["params"]["visual_token_num"]
    text = given["text_embeds"]
    kept = F.cdpruner(given["image_features"], given["image_embeds"], text, k)
    assert_distinct(kept, k)
    want = output(case, "indices_greedy_order").reshape(-1)
    if case["check"] == "exact":
        assert set(kept[0].tolist()) == set(want.tolist())
        if given["image_features"].shape[1] <= 64:
            # The greedy order: each shorter budget keeps the published order's prefix.
            for j in range(1, k):
                shorter = F.cdpruner(given["image_features"], given["image_embeds"], text, j)
                assert set(shorter[0].tolist()) == set(want[:j].tolist()), f"pick {j}"
    else:  # doc_only: a rank-deficient kernel; the picks up to its rank are defined
        rank = case["flags"].get("kernel_rank") or int(
            np.linalg.matrix_rank(given["image_features"][0].double().numpy())
        )
        assert set(want[:rank].tolist()) <= set(kept[0].tolist())


@pytest.mark.parametrize("case", of("visionzip"))
def test_visionzip(case):
    given = inputs(case)
    params = case["params"]
    indices, merged = F.visionzip(
        given["cls_attn_row"],
        given["hidden_states"],
        given["metric"],
        params["dominant"],
        params["contextual"],
    )
    assert indices.dtype == torch.int64 and int(indices[0, 0]) == 0
    assert indices[0].tolist() == output(case, "dominant_indices_sorted").reshape(-1).tolist()
    expected = torch.from_numpy(output(case, "hidden_states_save")).reshape(1, -1, merged.shape[-1])
    tolerance = 1e-10 if case["input_dtype"] == "float64" else 1e-5
    dominant = given["hidden_states"][0, indices[0]]
    got = torch.cat([dominant, merged[0]]).double()
    torch.testing.assert_close(got, expected[0].double(), rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("case", of("vispruner"))
def test_vispruner(case):
    given = inputs(case)
    params = case["params"]
    k, ratio = params["visual_token_num"], params["important_ratio"]
    kept = F.vispruner(given["image_features"], given["image_attentions"], k, ratio)
    assert_distinct(kept, k)
    if case["check"] == "expect_error":
        return  # the published code raises; visprune returns k distinct tokens (docstring)
    want = output(case, "selected_indices_code_order").reshape(-1)
    if case["check"] == "exact":
        assert set(kept[0].tolist()) == set(want.tolist())
    elif case["check"] == "tie_dependent" and "indices_sorted_stable_sorts" in case["outputs"]:
        # tie_dependent: exact ties, which the published unstable sorts order by platform; the
        # published code with stable sorts (ties: the lower index first) is what visprune does.
        assert kept[0].tolist() == output(case, "indices_sorted_stable_sorts").reshape(-1).tolist()
    elif case["check"] == "published_short":
        # The published loop ends below k; visprune keeps the a token that round meant to keep.
        assert set(want.tolist()) < set(kept[0].tolist())
    else:
        # advisory: float32 picks decided by rounding. visprune multiplies each round's a and b
        # as published, but clusters_k64 also meets an exact tie of a scores, which the
        # published unstable sort orders by platform; the attention part is exact everywhere.
        # tie_dependent without a stable-sort run: exact duplicates; the important part is
        # tie-free here.
        important = int(k * ratio)
        assert set(want[:important].tolist()) <= set(kept[0].tolist())


@pytest.mark.parametrize("case", of("dart"))
def test_dart(case):
    given = inputs(case)
    params = case["params"]
    budget = params["max_num_trunction"]
    if budget is None:  # the published fallback: a share of the image tokens
        budget = int(params["image_token_length"] * (1 - params["reduction_ratio"]))
    kept = F.dart(
        given["last_layer_state"],
        given["key_states"],
        params["image_token_start_index"],
        params["image_token_length"],
        budget,
        params["pivot_image_token"],
        params["pivot_text_token"],
    )
    pivots = params["pivot_image_token"] + params["pivot_text_token"]
    count = params["pivot_image_token"] + pivots * (budget // pivots)
    assert_distinct(kept, count)
    if case["check"] == "exact":
        assert kept[0].tolist() == sorted(output(case, "indices_sorted").reshape(-1).tolist())


def two_items(case: dict) -> dict[str, torch.Tensor]:
    """The case's inputs and a copy with the token order reversed, as a batch of two."""
    given = inputs(case)
    return {role: torch.cat([x, x.flip(-2)]) for role, x in given.items()}


def test_batched_calls_equal_each_item_alone():
    by_method = {
        c["method"]: c for c in CASES if c["check"] == "exact" and c["set"] == "baselines_public"
    }
    given = two_items(by_method["cdpruner"])
    text = inputs(by_method["cdpruner"])["text_embeds"]
    # CDPruner rescales relevance over the whole batch tensor, as published: items alone differ.
    batched = F.cdpruner(given["image_features"], given["image_embeds"], text, 32)
    assert batched.shape == (2, 32)
    given = two_items(by_method["vispruner"])
    k = given["image_features"].shape[1] // 3
    batched = F.vispruner(given["image_features"], given["image_attentions"], k)
    for row in range(2):
        alone = F.vispruner(
            given["image_features"][row : row + 1], given["image_attentions"][row : row + 1], k
        )
        assert torch.equal(batched[row], alone[0])
    case = by_method["visionzip"]
    given = inputs(case)
    # The second item: the same attention, features permuted (a different, valid input).
    second = {**given, "hidden_states": given["hidden_states"].flip(-1)}
    second["metric"] = given["metric"].flip(-1)
    stacked = {role: torch.cat([given[role], second[role]]) for role in given}
    dominant = given["hidden_states"].shape[1] // 3
    roles = ("cls_attn_row", "hidden_states", "metric")
    indices, merged = F.visionzip(*(stacked[r] for r in roles), dominant, 6)
    for row, item in enumerate((given, second)):
        alone_indices, alone_merged = F.visionzip(*(item[r] for r in roles), dominant, 6)
        assert torch.equal(indices[row], alone_indices[0])
        assert torch.equal(merged[row], alone_merged[0])


def test_bad_arguments_raise():
    x = torch.randn(1, 10, 4)
    with pytest.raises(ValueError, match="k must be in"):
        F.vispruner(x, torch.rand(1, 2, 10), 11)
    with pytest.raises(ValueError, match="contextual"):
        F.visionzip(torch.rand(1, 2, 11), torch.randn(1, 11, 4), torch.randn(1, 11, 3), 8, 5)
    with pytest.raises(ValueError, match="do not fit"):
        F.dart(torch.randn(1, 20, 4), torch.randn(1, 2, 20, 3), 5, 30, 8)
