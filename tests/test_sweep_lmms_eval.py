"""``visprune sweep`` on lmms-eval tasks, in process through visprune's lmms-eval plugin: the
bundled demo model on the ``visprune_demo`` task scores what the sweep's own demo task scores."""

from __future__ import annotations

import pytest

from conftest import refused
from visprune.cli import main
from visprune.demo.run import bundled_checkpoint
from visprune.sweep import records

pytest.importorskip("lmms_eval", reason="install the eval extra: make install")
pytest.importorskip("matplotlib", reason="the plots need the plot extra: make install")

LIMIT = 12
ARGS = ["--methods", "divprune,fastv", "--budgets", "7", "--limit", str(LIMIT)]


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets"))


def test_lmms_eval_task_scores_what_the_demo_task_scores(tmp_path):
    lmms, demo = tmp_path / "lmms", tmp_path / "demo"
    model = ["--model", str(bundled_checkpoint())]
    tasks = "visprune_demo,visprune_demo_loglikelihood"
    argv = ["sweep", *model, "--tasks", tasks, *ARGS, "--batch-size", "4", "--out", str(lmms)]
    assert main(argv) == 0
    assert main(["sweep", *ARGS, "--out", str(demo)]) == 0
    expected = {(r["method"], r["budget"]): r for r in records.load(demo)}
    found = records.load(lmms)
    assert len(found) == 2 * len(expected)
    for record in found:
        reference = expected[(record["method"], record["budget"])]
        metric = "exact_match" if record["task"] == "visprune_demo" else "acc"
        assert record["metrics"][metric] == pytest.approx(reference["metrics"]["accuracy"])
        assert record["samples"] == LIMIT and record["limit"] == LIMIT
        assert record["visual_tokens"] == reference["visual_tokens"]
        assert "lmms_eval" in record["versions"]
        if record["task"] == "visprune_demo":  # the same prompts, prefilled the same way
            assert record["prefill_flops_ratio"] == pytest.approx(reference["prefill_flops_ratio"])
    text = (lmms / "results.md").read_text()
    assert "## visprune_demo\n" in text and "## visprune_demo_loglikelihood\n" in text


def test_an_unknown_lmms_eval_task_is_refused_before_loading(tmp_path, capsys, monkeypatch):
    from visprune.sweep import lmms_runner

    monkeypatch.setattr(lmms_runner.LmmsEvalRunner, "_load", lambda self: pytest.fail("loaded"))
    argv = ["sweep", "--model", str(bundled_checkpoint()), "--tasks", "visprune_demoo", *ARGS]
    err = refused(main, [*argv, "--out", str(tmp_path / "o")], capsys)
    assert "did you mean visprune_demo" in err


def test_lmms_eval_scores_become_named_metrics():
    from visprune.sweep.lmms_runner import _metrics

    scores = {
        "alias": "pope",
        "exact_match,none": 0.75,
        "exact_match_stderr,none": "N/A",
        "f1,strict": 0.5,
        "f1_stderr,strict": 0.01,
        "samples,none": True,
    }
    assert _metrics(scores) == {"exact_match": 0.75, "f1 (strict)": 0.5}
