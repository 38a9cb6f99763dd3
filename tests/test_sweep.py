"""``visprune sweep`` on the bundled demo task: records, resume, re-render, plots and table."""

from __future__ import annotations

import json
import re

import pytest
from PIL import Image

import visprune
from conftest import refused
from visprune.cli import main
from visprune.demo import evaluate, task
from visprune.demo import model as demo_model
from visprune.demo.run import bundled_checkpoint
from visprune.sweep import demo_runner, grid, records, table
from visprune.sweep.plots import pareto_front

pytest.importorskip("matplotlib", reason="the plots need the plot extra: make install")

LIMIT = 20
METHODS = "divprune,random,fastv"
BUDGETS = "7,0.25"
#: The unpruned reference, then 3 methods at 2 budgets.
CONFIGURATIONS = 7


def sweep(out, *extra: str) -> int:
    argv = ["sweep", "--methods", METHODS, "--budgets", BUDGETS, "--limit", str(LIMIT)]
    return main([*argv, "--out", str(out), *extra])


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished sweep's folder."""
    out = tmp_path_factory.mktemp("sweep")
    assert sweep(out) == 0
    return out


def test_every_configuration_is_one_record_with_the_listed_fields(finished):
    found = records.load(finished)
    assert len(found) == CONFIGURATIONS
    for record in found:
        assert set(records.FIELDS) <= set(record)
        assert record["task"] == "demo" and record["limit"] == LIMIT
        assert record["samples"] == LIMIT and record["seconds"] > 0
        assert {"visprune", "torch", "transformers"} <= set(record["versions"])
        assert set(record["metrics"]) == {
            "accuracy",
            *(f"accuracy/{t}" for t in task.QUESTION_TYPES),
        }
    reference = found[0]
    assert reference["method"] == "unpruned" and reference["budget"] is None
    assert reference["prefill_flops_ratio"] == 1.0
    assert reference["visual_tokens"] == reference["visual_tokens_unpruned"] == task.NUM_CELLS
    pruned = {(r["method"], r["budget"]): r for r in found[1:]}
    assert set(pruned) == {(m, b) for m in METHODS.split(",") for b in (7, 0.25)}
    assert pruned[("divprune", 7)]["visual_tokens"] == 7
    assert pruned[("divprune", 0.25)]["visual_tokens"] == 16
    assert pruned[("fastv", 7)]["positions"] == "original"  # inside the LLM: the only mode
    assert pruned[("fastv", 7)]["params"] == {"layer": 2}
    # The same kept tokens cost the same FLOPs, whichever are kept; pruning inside the language
    # model (from layer 2) saves less than before it; fewer tokens, fewer FLOPs.
    for budget in (7, 0.25):
        divprune, random_ = pruned[("divprune", budget)], pruned[("random", budget)]
        assert divprune["prefill_flops_ratio"] == pytest.approx(random_["prefill_flops_ratio"])
        assert divprune["prefill_flops_ratio"] < pruned[("fastv", budget)]["prefill_flops_ratio"]
        assert pruned[("fastv", budget)]["prefill_flops_ratio"] < 1.0
    assert (
        pruned[("divprune", 7)]["prefill_flops_ratio"]
        < pruned[("divprune", 0.25)]["prefill_flops_ratio"]
    )


def test_accuracies_are_what_the_demo_scores(finished):
    """Each record's accuracy is the demo's arg-max scoring of the same questions."""
    model, processor = demo_model.load(bundled_checkpoint())
    encoder = evaluate.Encoder(processor.tokenizer)
    questions = task.make_split(0, "test", LIMIT)
    found = {(r["method"], r["budget"]): r for r in records.load(finished)}
    assert found[("unpruned", None)]["metrics"]["accuracy"] == pytest.approx(
        evaluate.accuracy(model, questions, encoder)["all"]
    )
    with visprune.apply(model, "divprune", budget=7):
        expected = evaluate.accuracy(model, questions, encoder)
    metrics = found[("divprune", 7)]["metrics"]
    assert metrics["accuracy"] == pytest.approx(expected["all"])
    for qtype in task.QUESTION_TYPES:
        assert metrics[f"accuracy/{qtype}"] == pytest.approx(expected[qtype])


def test_the_plots_are_pngs(finished):
    for name in ("accuracy_vs_tokens.png", "accuracy_vs_flops.png"):
        with Image.open(finished / name) as picture:
            assert picture.format == "PNG"
            assert picture.width > 800 and picture.height > 500
            picture.verify()


def _rows(markdown: str) -> list[list[str]]:
    lines = [line for line in markdown.splitlines() if re.match(r"\| (?!method |-)", line)]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]


def test_the_table_holds_exactly_the_records(finished):
    found = records.load(finished)
    rows = _rows((finished / "results.md").read_text())
    assert len(rows) == len(found)
    names = table.metric_names(found)
    for row, record in zip(rows, found, strict=True):
        method, budget, positions, tokens, flops, *metrics = row
        assert method == record["method"]
        assert budget == grid.format_budget(record["budget"])
        assert positions == (record["positions"] or "-")
        kept, unpruned = (float(x) for x in tokens.split(" of "))
        assert kept == pytest.approx(record["visual_tokens"])
        assert unpruned == pytest.approx(record["visual_tokens_unpruned"])
        assert float(flops.rstrip("%")) == pytest.approx(
            100 * record["prefill_flops_ratio"], abs=0.05
        )
        for name, cell in zip(names, metrics, strict=True):
            assert float(cell) == pytest.approx(100 * record["metrics"][name], abs=0.05)


def _no_model_load(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(demo_model, "load", refuse)


def test_a_finished_sweep_re_renders_without_loading_a_model(finished, monkeypatch):
    _no_model_load(monkeypatch)
    for name in ("results.md", "accuracy_vs_tokens.png"):
        (finished / name).unlink()
    assert main(["sweep", "--out", str(finished), "--render-only"]) == 0
    assert (finished / "results.md").is_file() and (finished / "accuracy_vs_tokens.png").is_file()
    before = (finished / records.RESULTS).read_text()
    assert sweep(finished) == 0  # everything is recorded: nothing runs, the files are redrawn
    assert (finished / records.RESULTS).read_text() == before


def test_an_interrupted_sweep_resumes_where_it_stopped(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    ran: list[str] = []
    original = demo_runner.DemoRunner.run

    def interrupted(self, configuration):
        if len(ran) == 3:
            raise KeyboardInterrupt
        ran.append(configuration.key)
        return original(self, configuration)

    monkeypatch.setattr(demo_runner.DemoRunner, "run", interrupted)
    assert sweep(out) == 130  # Ctrl-C: what to do next, no traceback
    assert "run the same command to resume" in capsys.readouterr().err
    assert len(records.load(out)) == 3
    # a kill in the middle of writing the fourth record leaves a partial line
    with (out / records.RESULTS).open("a") as file:
        file.write('{"task": "demo", "method": "rand')
    assert len(records.load(out)) == 3
    ran.clear()

    def counted(self, configuration):
        ran.append(configuration.key)
        return original(self, configuration)

    monkeypatch.setattr(demo_runner.DemoRunner, "run", counted)
    assert sweep(out) == 0
    found = records.load(out)
    assert len(found) == CONFIGURATIONS and len(ran) == CONFIGURATIONS - 3
    assert len({records.record_key(r) for r in found}) == CONFIGURATIONS
    assert all(json.loads(line) for line in (out / records.RESULTS).read_text().splitlines())


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--methods", "divprun", "--budgets", "7"], "Did you mean 'divprune'"),
        (["--methods", "divprune", "--budgets", "0"], "must be a positive count"),
        (["--methods", "divprune", "--budgets", "7,abc"], "is not a number"),
        (["--methods", "divprune", "--budgets", "1.5"], "--budgets 1.5 for divprune"),
        (["--methods", "divprune"], "--budgets is required"),
        (["--methods", "divprune,,random", "--budgets", "7"], "has an empty item"),
        (["--methods", "keepall", "--budgets", "7"], "name at least one method"),
        (["--budgets", "7", "--positions", "sideways"], "choose from compact, original"),
        (["--budgets", "7", "--limit", "0"], "--limit must be >= 1"),
        (["--budgets", "7", "--tasks", "pope"], "need --model"),
        (["--budgets", "7", "--model", "/nonexistent"], "--model needs --tasks"),
        (["--budgets", "7", "--model", "/nonexistent", "--tasks", "demo"], "no such directory"),
    ],
)
def test_bad_input_is_refused_before_any_model_loads(tmp_path, capsys, monkeypatch, argv, message):
    _no_model_load(monkeypatch)
    err = refused(main, ["sweep", *argv, "--out", str(tmp_path / "o")], capsys)
    assert message in err, err


def test_a_folder_of_another_sweep_is_refused(finished, capsys, monkeypatch):
    _no_model_load(monkeypatch)
    argv = ["sweep", "--methods", "divprune", "--budgets", "7", "--limit", "5"]
    err = refused(main, [*argv, "--out", str(finished)], capsys)
    assert "holds a sweep of bundled demo model with limit 20" in err


def test_render_only_without_records_says_so(tmp_path, capsys):
    err = refused(main, ["sweep", "--out", str(tmp_path), "--render-only"], capsys)
    assert "holds no records" in err


def test_the_pareto_front_keeps_what_nothing_beats():
    points = [(100, 98), (40, 56), (46, 46), (80, 80), (82, 86), (40, 38), (80, 52)]
    assert pareto_front(points) == [(40, 56), (80, 80), (82, 86), (100, 98)]
