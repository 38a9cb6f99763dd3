"""The papers' FLOPs formula and table."""

from __future__ import annotations

import pytest

from visprune.flops import paper_table_row, prefill_flops


@pytest.mark.parametrize(
    "hidden,ffn,layers,full,pruned,percent",
    [(4096, 11008, 32, 3.228, 0.512, 15.63), (5120, 13824, 40, 6.281, 1.002, 15.71)],
    ids=["llava-1.5-7b", "llava-1.5-13b"],
)
def test_published_rows(hidden, ffn, layers, full, pruned, percent):
    row = paper_table_row(hidden, ffn, layers)
    assert round(row.full_tflops, 3) == full
    assert round(row.pruned_tflops, 3) == pruned
    assert round(row.percent, 2) == percent


def test_formula_terms():
    # One layer, n=2, d=3, m=5: 4*2*9 + 2*4*3 + 2*2*3*5 = 72 + 24 + 60.
    assert prefill_flops(2, 3, 5, 1) == 156.0
    assert prefill_flops(0, 4096, 11008, 32) == 0.0
    assert prefill_flops(10, 8, 16, 4) == 4 * prefill_flops(10, 8, 16, 1)


@pytest.mark.parametrize("bad", [{"seq_len": -1}, {"hidden": 2.5}, {"layers": True}])
def test_bad_sizes_raise(bad):
    args = {"seq_len": 10, "hidden": 8, "ffn": 16, "layers": 2, **bad}
    with pytest.raises(ValueError, match=next(iter(bad))):
        prefill_flops(**args)


def test_unknown_formula_raises():
    with pytest.raises(ValueError, match="available: paper"):
        prefill_flops(10, 8, 16, 2, formula="exact")
