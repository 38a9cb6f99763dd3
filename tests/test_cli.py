"""The ``visprune`` command line."""

from __future__ import annotations

import subprocess
import sys

import pytest

import visprune
from conftest import refused
from visprune.cli import build_parser, main


def test_methods_lists_every_method_with_stage_and_parameters(capsys):
    assert main(["methods"]) == 0
    lines = capsys.readouterr().out.splitlines()
    listed = [line.split()[0] for line in lines[1:]]
    assert listed == visprune.list_methods()
    rediprune = next(line for line in lines if line.startswith("rediprune"))
    assert "vision" in rediprune and "prompt text" in rediprune and "alpha=0.5" in rediprune


@pytest.mark.parametrize(
    "method,needs",
    [
        ("vispruner", "vision CLS attention"),
        ("visionzip", "vision CLS attention, vision keys"),
        ("fastv", "LLM attention rows"),
        ("pdrop", "LLM attention rows"),
        ("dart", "LLM key norms; optional: prompt text"),
        ("divprune", "tokens only"),
        ("cdpruner", "prompt text"),
        ("resprune", "optional: prompt text"),
        ("rediprune", "prompt text or a pooled query"),
    ],
)
def test_methods_shows_what_each_method_reads(capsys, method, needs):
    """The needs column comes from the classes' requires/uses: CLS-attention and in-LLM
    methods do not read the prompt."""
    main(["methods"])
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith(method))
    assert needs in line
    if "text" not in visprune.METHODS[method].uses:
        assert "prompt text" not in line


def test_no_command_prints_help_and_fails(capsys):
    assert main([]) == 2
    assert "methods" in capsys.readouterr().err


def test_version():
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0


def test_module_entry_point_runs():
    result = subprocess.run(
        [sys.executable, "-m", "visprune.cli", "methods"], capture_output=True, text=True
    )
    assert result.returncode == 0 and "otprune" in result.stdout


def _refused(argv, capsys) -> str:
    return refused(main, argv, capsys)


GENERATE = ["generate", "--image", "q.png", "--prompt", "x", "--model"]


@pytest.mark.parametrize("model", ["./llava-mistyped", "~/no/such/model", "my model!", "a/b/c"])
def test_a_path_like_model_that_does_not_exist_is_refused_at_once(capsys, model):
    err = _refused([*GENERATE, model], capsys)
    assert f"--model {model!r}: no such directory" in err


def test_a_model_neither_local_nor_cached_is_refused_offline_at_once(capsys, monkeypatch):
    import time

    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    start = time.perf_counter()
    err = _refused([*GENERATE, "llava-mistyped"], capsys)
    assert time.perf_counter() - start < 5
    assert "no such directory" in err and "HF_HUB_OFFLINE" in err


def test_a_model_neither_local_nor_cached_with_the_hub_out_of_reach(capsys, monkeypatch):
    import huggingface_hub

    asked = []

    def unreachable(repo_id, timeout=None, **kwargs):
        asked.append(timeout)
        raise ConnectionError("no route to host")

    monkeypatch.setattr(huggingface_hub, "model_info", unreachable)
    err = _refused([*GENERATE, "llava-mistyped"], capsys)
    assert "no such directory" in err and "Hub cannot be reached" in err
    assert asked and asked[0] is not None and asked[0] <= 10  # one short try, no retries


def test_errors_after_parsing_show_the_command_usage(capsys):
    err = _refused([*GENERATE, "./nope"], capsys)
    assert err.startswith("usage: visprune generate")


@pytest.mark.parametrize("budget", ["inf", "-inf", "nan", "1e999"])
def test_an_infinite_budget_is_refused_as_not_finite(capsys, budget):
    err = _refused(["bench", "--model", ".", f"--budget={budget}"], capsys)
    assert "must be a finite count or fraction" in err


@pytest.mark.parametrize(
    "command,default",
    [
        ("bench", "(default: 16)"),
        ("bench", "(default: Describe this image.)"),
        ("generate", "(default: 32)"),
        ("demo", "(default: visprune-demo)"),
        ("demo", "(default: compact)"),
    ],
)
def test_help_shows_the_defaults(capsys, monkeypatch, command, default):
    monkeypatch.setenv("COLUMNS", "300")  # no line breaks inside a default
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert default in capsys.readouterr().out


@pytest.mark.parametrize("command", ["bench", "generate"])
def test_bench_and_generate_take_positions(command):
    argv = [command, "--model", "m", "--image", "q.png", "--prompt", "x"]
    args = build_parser().parse_args([*argv, "--positions", "original"])
    assert args.positions == "original"
    assert build_parser().parse_args(argv).positions is None


def test_the_version_warning_comes_before_any_progress_bar(monkeypatch, tmp_path):
    """Out of the tested transformers range, the warning is out before the demo starts."""
    import warnings

    from visprune import compat
    from visprune.demo import run as demo_run

    monkeypatch.setattr(compat, "in_tested_range", lambda version=None: False)
    monkeypatch.setattr(compat, "_warned", set())
    seen = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        monkeypatch.setattr(demo_run, "run", lambda *args, **kwargs: seen.append(len(caught)))
        assert main(["demo", "--quick", "--out", str(tmp_path / "o")]) == 0
    assert seen == [1] and "tested with transformers" in str(caught[0].message)


def test_the_demo_times_are_stated_alike_in_the_cli_readme_and_makefile(capsys, monkeypatch):
    """Measured on an idle 2-core CPU: both demos about 30 s, --quick about 5 s."""
    from pathlib import Path

    from visprune.cli import DEMO_TIMES

    root = Path(__file__).parent.parent
    assert "about 30 s together" in DEMO_TIMES and "--quick takes about 5 s" in DEMO_TIMES
    readme = " ".join((root / "README.md").read_text().split())
    assert "demo models (image and video): every method at 3 budgets (about 2" not in readme
    assert "take about 30 s together (20 s and 12 s), plus the install" in readme
    makefile = (root / "Makefile").read_text()
    assert "about 30 s for both demos" in makefile
    assert "visprune demo --quick: about 5 s" in makefile
    monkeypatch.setenv("COLUMNS", "300")
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    assert "--quick takes about 5 s" in capsys.readouterr().out


def test_the_video_demo_writes_beside_the_image_demo_by_default(monkeypatch, tmp_path):
    """``make demo`` runs both demos without --out: the video run keeps the image run's files."""
    from visprune.demo import run as demo_run
    from visprune.demo import video_run

    outs = []
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(demo_run, "run", lambda *a, **kw: outs.append(("image", kw["out"])))
    monkeypatch.setattr(video_run, "run", lambda *a, **kw: outs.append(("video", kw["out"])))
    assert main(["demo", "--quick"]) == 0
    assert main(["demo", "--quick", "--video"]) == 0
    assert main(["demo", "--quick", "--video", "--out", "mine"]) == 0
    assert outs == [
        ("image", "visprune-demo"),
        ("video", "visprune-demo/video"),
        ("video", "mine"),
    ]


@pytest.mark.parametrize(
    "command", [["demo", "--quick"], ["demo", "--quick", "--video"], ["sweep"]]
)
def test_an_empty_out_folder_is_refused(capsys, monkeypatch, tmp_path, command):
    """``--out ''`` is a mistake, not a request for the default folder or the current one."""
    monkeypatch.chdir(tmp_path)
    err = _refused([*command, "--out", ""], capsys)
    assert "--out is empty; name a folder" in err
    assert list(tmp_path.iterdir()) == []
