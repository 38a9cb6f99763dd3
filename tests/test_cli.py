"""The ``visprune`` command line."""

from __future__ import annotations

import subprocess
import sys

import pytest

import visprune
from visprune.cli import main


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
        ("divprune", "tokens only"),
        ("cdpruner", "prompt text"),
        ("resprune", "optional: prompt text"),
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


@pytest.mark.parametrize(
    "size,expected",
    [
        ((64, 64), (384, 384)),
        ((6000, 4000), (1024, 683)),
        ((500, 400), (500, 400)),
        ((100, 30), (1000, 300)),
    ],
)
def test_kept_token_pictures_are_scaled_to_a_readable_size(size, expected):
    from PIL import Image

    from visprune.cli import _readable

    assert _readable(Image.new("RGB", size)).size == expected
