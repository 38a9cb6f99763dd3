"""``visprune.bench.measure`` and the ``visprune bench`` command on the tiny models."""

from __future__ import annotations

import json

import pytest
import torch

import visprune
from conftest import spy_positions
from layer_stage_models import deep
from tiny_vlms import GENERATE, SPECIAL, inputs, tiny
from visprune import cli
from visprune.bench import BenchResult, Stat, measure
from visprune.cli import main

GEN = {key: value for key, value in GENERATE.items() if key != "max_new_tokens"}
FAST = {"new_tokens": 3, "warmup": 1, "repeats": 2, "progress": False, "generate_kwargs": GEN}


@pytest.fixture(scope="module", params=["llava", "qwen2_5_vl"])
def runs(request):
    family = request.param
    model = tiny(family)
    data = inputs(family, model)
    with torch.no_grad():
        before = model(**data).logits
    full = measure(model, data, **FAST)
    pruned = measure(model, data, "divprune", 0.5, **FAST)
    with torch.no_grad():
        after = model(**data).logits
    return family, model, data, full, pruned, before, after


def test_fields_present_and_positive(runs):
    _, _, _, full, pruned, _, _ = runs
    for result in (full, pruned):
        assert isinstance(result, BenchResult)
        for stat in (result.prefill_s, result.decode_s_per_token, result.vision_s):
            assert isinstance(stat, Stat) and len(stat.samples) == 2
            assert stat.min <= stat.median <= stat.max and stat.min > 0
        assert result.kv_cache_bytes > 0 and result.kv_cache_length > 0
        assert result.flops["prefill_total"] > 0 and result.flops["decode_total"] > 0
        assert result.peak_memory_bytes is None  # CPU
        assert result.device == "cpu"
    assert full.method == "keepall" and full.params == {} and full.select_s is None
    assert pruned.method == "divprune" and pruned.params == {"budget": 0.5}
    assert pruned.select_s is not None and pruned.select_s.min > 0


def test_visual_tokens_and_kv_cache_shrink_exactly(runs):
    _, _, data, full, pruned, _, _ = runs
    placeholders = int(((data["input_ids"] >= 100) & (data["input_ids"] <= 101)).sum())
    assert full.visual_tokens_before == full.visual_tokens_after == placeholders
    assert pruned.visual_tokens_before == placeholders
    assert pruned.visual_tokens_after == placeholders // 2 < placeholders
    length = data["input_ids"].shape[1]
    assert full.kv_cache_length == length
    assert pruned.kv_cache_length == length - (placeholders - pruned.visual_tokens_after)
    assert pruned.kv_cache_bytes * full.kv_cache_length == (
        full.kv_cache_bytes * pruned.kv_cache_length
    )
    assert pruned.flops["prefill_total"] < full.flops["prefill_total"]


def test_model_unchanged_after_measure(runs):
    _, model, _, _, _, before, after = runs
    assert torch.equal(before, after)
    assert "_visprune_handles" not in model.__dict__
    assert not model._forward_pre_hooks and not model.model.language_model._forward_pre_hooks


def test_to_dict_is_json_with_params_and_versions(runs):
    _, _, _, full, pruned, _, _ = runs
    encoded = json.loads(json.dumps(pruned.to_dict()))
    assert encoded["params"] == {"budget": 0.5}
    assert set(encoded["versions"]) == {"visprune", "torch", "transformers", "python"}
    assert encoded["versions"]["visprune"] == visprune.__version__
    assert encoded["prefill_s"]["median"] > 0
    ratios = pruned.ratio_to(full)
    assert ratios["kv_cache_reduction"] > 1 and ratios["visual_token_reduction"] == 2


def test_flops_count_the_vision_tower(runs):
    """Qwen2.5-VL's windowed tower counts too: from the batch's own image grid."""
    from visprune.flops import model_flops

    _, model, data, full, pruned, _, _ = runs
    visual = full.visual_tokens_before
    extra = {"grids": data["image_grid_thw"].tolist()} if "image_grid_thw" in data else {}
    want = model_flops(model.config, visual, 0, **extra)["prefill"]
    assert want.vision > 0
    for result in (full, pruned):
        assert result.flops["prefill"]["vision"] == pytest.approx(want.vision, rel=1e-12)
        assert result.flops["prefill"]["projector"] == pytest.approx(want.projector, rel=1e-12)


def test_measure_restores_model_on_error():
    model = tiny("llava")
    data = inputs("llava", model)
    with pytest.raises(ValueError, match="bogus"):
        measure(model, data, "divprune", 0.5, **{**FAST, "generate_kwargs": {"bogus": object()}})
    assert "_visprune_handles" not in model.__dict__
    assert not model.model.vision_tower._forward_hooks
    assert not model.model.vision_tower._forward_pre_hooks


def test_measure_rejects_bad_arguments():
    model = tiny("llava")
    data = inputs("llava", model)
    with pytest.raises(ValueError, match="new_tokens"):
        measure(model, data, new_tokens=1)
    with pytest.raises(ValueError, match="budget"):
        measure(model, data, None, 0.5)
    with pytest.raises(KeyError):
        measure(model, data, "nope")
    with visprune.apply(model, "divprune", 0.5), pytest.raises(ValueError, match="remove"):
        measure(model, data, progress=False)


def test_cli_bench_missing_model_path(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--model", "/does/not/exist"])
    assert exit_info.value.code == 2
    assert "no such directory" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["bench"], "--model"),
        (["bench", "--model", ".", "--budget", "x"], "budget must be a number"),
        (["bench", "--model", ".", "--param", "gamma"], "KEY=VALUE"),
        (["bench", "--model", ".", "--repeats", "0"], "must be >= 1"),
        (["bench", "--model", ".", "--method", "nope"], "unknown method"),
        (["bench", "--model", ".", "--method", "divprune", "--param", "zz=1"], "zz"),
        (["bench", "--model", ".", "--image", "/no/such.png"], "no such file"),
        (["bench", "--model", ".", "--compile"], "--compile needs --method"),
    ],
)
def test_cli_bench_argument_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_cli_bench_parses_arguments():
    argv = "bench --model m --method otprune --budget 64 --param tau=0.1 --param name=x"
    args = cli.build_parser().parse_args([*argv.split(), "--new-tokens", "4", "--json"])
    assert args.budget == 64 and isinstance(args.budget, int)
    assert dict(args.param) == {"tau": 0.1, "name": "x"}
    assert args.new_tokens == 4 and args.json and args.repeats == 5


@pytest.mark.parametrize("as_json", [False, True])
def test_cli_bench_runs_end_to_end(monkeypatch, capsys, as_json):
    """The loader is replaced by a tiny model (building a real processor needs downloads)."""
    model = tiny("llava")
    model.generation_config.suppress_tokens = list(SPECIAL)
    data = inputs("llava", model)
    monkeypatch.setattr(cli, "_load_bench", lambda args: (model, data))
    argv = ["bench", "--model", ".", "--method", "divprune", "--budget", "0.5"]
    argv += ["--new-tokens", "2", "--repeats", "1", "--warmup", "0"]
    assert main(argv + (["--json"] if as_json else [])) == 0
    out = capsys.readouterr().out
    if as_json:
        result = json.loads(out)
        assert result["method"] == "divprune" and result["visual_tokens_after"] == 2
    else:
        assert "time to first token" in out and "4 -> 2" in out


def bench_tiny_llava(monkeypatch, *argv: str) -> list[str]:
    """``visprune bench`` argv on a tiny LLaVA, which replaces the loader (as above)."""
    model = tiny("llava")
    model.generation_config.suppress_tokens = list(SPECIAL)
    monkeypatch.setattr(cli, "_load_bench", lambda args: (model, inputs("llava", model)))
    return ["bench", "--model", ".", *argv, "--new-tokens", "2", "--repeats", "1", "--json"]


def test_cli_bench_compile_runs_the_compiled_selection(monkeypatch, capsys):
    """``--compile`` reaches ``visprune.apply`` and the selection runs through the compiled
    core (torch's graph capture, run as is instead of Inductor's code), keeping what eager
    keeps."""
    from visprune import api
    from visprune.methods import base

    monkeypatch.setattr(visprune.compiled, "BACKEND", "eager")
    applied, compiled = [], []
    original_apply, original_core = api.apply, base.compiled_core

    def spy_apply(model, method, **kwargs):
        applied.append(kwargs.get("compile"))
        return original_apply(model, method, **kwargs)

    def spy_core(method, mode="default"):
        compiled.append((method.name, mode))
        return original_core(method, mode)

    monkeypatch.setattr(api, "apply", spy_apply)
    monkeypatch.setattr(base, "compiled_core", spy_core)
    argv = bench_tiny_llava(monkeypatch, "--method", "divprune", "--budget", "0.5")
    assert main(argv) == 0
    eager = json.loads(capsys.readouterr().out)
    assert applied == [False] and not compiled and eager["compile"] is None
    assert main([*argv, "--compile"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert applied == [False, True] and compiled and set(compiled) == {("divprune", "default")}
    assert result["compile"] == "default"
    assert result["visual_tokens_after"] == eager["visual_tokens_after"] == 2


def test_cli_bench_compile_refuses_a_method_that_does_not_compile(monkeypatch, capsys):
    """FastV's selection reads the host: one clear line, exit status 2, no traceback."""
    argv = ["--method", "fastv", "--budget", "0.5", "--param", "layer=1", "--compile"]
    with pytest.raises(SystemExit) as exit_info:
        main(bench_tiny_llava(monkeypatch, *argv))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (line,) = [line for line in err.splitlines() if "error:" in line]
    assert "fastv's selection cannot run as one torch.compile" in line
    assert line.endswith("Run it eagerly (compile=False) instead.")


def test_alignment_matches_the_metrics_on_the_recorded_selection(runs):
    from visprune.metrics import alignment_report

    _, model, data, full, pruned, _, _ = runs
    assert full.alignment is None
    assert set(pruned.alignment) == {"w2", "coverage", "relevance"}
    seen = {}

    def record_embeds(_module, _args, kwargs):
        seen.setdefault("embeds", kwargs["inputs_embeds"])

    with visprune.apply(model, "divprune", 0.5) as handle, torch.no_grad():
        hook = model.model.language_model.register_forward_pre_hook(
            record_embeds, with_kwargs=True, prepend=True
        )
        model(**data)
        hook.remove()
        (record,) = handle.selections
    assert torch.equal(record.candidates[record.kept], record.positions)
    embeds = seen["embeds"][0]
    text = embeds[int(record.candidates.max()) + 1 :]  # the prompt after the image
    expected = alignment_report(embeds[record.candidates], record.kept, text)
    for key, value in expected.items():
        assert pruned.alignment[key] == pytest.approx(value, rel=1e-6)


def test_onevision_video_counts_compare_pruned_and_unpruned():
    """The always-kept video newline counts on both sides, as it sits in the KV cache on both."""
    model = tiny("llava_onevision")
    data = inputs("llava_onevision", model, video=True)
    placeholders = int((data["input_ids"] == model.config.video_token_id).sum())
    full = measure(model, data, **FAST)
    pruned = measure(model, data, "divprune", 0.5, **FAST)
    assert full.visual_tokens_before == full.visual_tokens_after == placeholders
    assert pruned.visual_tokens_before == placeholders
    dropped = placeholders - pruned.visual_tokens_after
    assert dropped == (placeholders - 1) // 2  # half of each frame; the newline stays
    assert pruned.kv_cache_length == full.kv_cache_length - dropped


def test_internvl_vision_flops_count_every_tile():
    """InternVL encodes each tile alone: the vision FLOPs are those of all the prompt's tiles."""
    from visprune.flops import model_flops

    model = tiny("internvl")
    data = inputs("internvl", model)  # one image of 3 tiles
    result = measure(model, data, "divprune", 0.5, **FAST)
    visual = int((data["input_ids"] == model.config.image_token_id).sum())
    want = model_flops(model.config, visual, 0, tiles_per_image=3)["prefill"]
    assert result.flops["prefill"]["vision"] == pytest.approx(want.vision, rel=1e-12)
    assert result.flops["prefill"]["projector"] == pytest.approx(want.projector, rel=1e-12)


def test_merging_method_counts_its_new_tokens_and_times_reduce():
    """VisionZip keeps ``budget`` tokens per image, kept plus merged; its time is reduce's."""
    model = tiny("llava_next")
    data = inputs("llava_next", model, batch=2)
    result = measure(model, data, "visionzip", 6, contextual_ratio=0.34, **FAST)
    images = len(data["image_sizes"])
    newlines = result.visual_tokens_before - images * 12  # newlines stay (vision stage)
    assert result.visual_tokens_after == images * 6 + newlines
    assert result.select_s is not None and result.select_s.median > 0


def test_measure_passes_positions_to_apply(monkeypatch):
    from visprune import api

    seen = spy_positions(monkeypatch, api)
    model = tiny("llava")
    measure(model, inputs("llava", model), "divprune", 0.5, positions="original", **FAST)
    assert seen == ["original"]


def test_the_handle_shows_the_layer_pruner_only_while_a_layer_method_runs():
    """``Handle.layer_pruner`` is what measures a layer-stage method's scores (bench times its
    ``signals``); None for a method before the language model, and once removed."""
    from visprune.adapters.layers import LayerPruner

    model = deep("llava")
    with visprune.apply(model, "divprune", budget=0.5) as handle:
        assert handle.layer_pruner is None
    handle = visprune.apply(model, "fastv", layer=1, budget=0.5)
    assert isinstance(handle.layer_pruner, LayerPruner)
    handle.remove()
    assert handle.layer_pruner is None
