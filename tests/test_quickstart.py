"""Every code block of the README's and the getting-started page's install and quick start runs.

Python blocks run as written, offline, on the bundled demo models. Shell blocks are split into
commands: ``visprune ...`` and the lmms-eval commands run as written; ``make`` targets and
``pip install`` extras must exist; ``vllm serve`` overrides must parse as the plugin parses them
(the vLLM blocks are served in the vLLM environment: tests/vllm_serving/test_quickstart_vllm.py).
A command of any other kind fails the test, so no block goes unchecked. The demo page's Python
blocks (loading the bundled models) run as well; its shell blocks train models for an hour.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

from visprune.integrations.vllm.settings import parse_settings

ROOT = Path(__file__).parent.parent
PAGES = (ROOT / "README.md", ROOT / "docs" / "getting-started.md")
BIN = Path(sys.executable).parent
FENCE = re.compile(r"^```(\w+)\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def code_blocks(path: Path) -> list[tuple[str, str, str]]:
    """``(id, language, code)`` of each fenced block of ``path``, the id naming its line."""
    text = path.read_text()
    return [
        (f"{path.name}:{text[: match.start()].count(chr(10)) + 1}", match[1], match[2])
        for match in FENCE.finditer(text)
    ]


def unique_blocks(language: str) -> list[tuple[str, str]]:
    """The pages' blocks in ``language``, a block repeated on both pages once."""
    seen: dict[str, str] = {}
    for path in PAGES:
        for block_id, lang, code in code_blocks(path):
            if lang == language:
                seen.setdefault(code, block_id)
    return [(block_id, code) for code, block_id in seen.items()]


def commands(script: str) -> list[str]:
    """The shell commands of ``script``: continuation lines joined, comments dropped."""
    joined = script.replace("\\\n", " ")
    lines = (line.split(" #", 1)[0].strip() for line in joined.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def vllm_overrides(code: str) -> list[dict]:
    """The ``hf_overrides`` of every ``LLM(...)`` call in a Python block."""
    calls = [
        node
        for node in ast.walk(ast.parse(code))
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "LLM"
    ]
    assert calls, "a vLLM block without an LLM(...) call"
    return [
        ast.literal_eval(keyword.value)
        for call in calls
        for keyword in call.keywords
        if keyword.arg == "hf_overrides"
    ]


PYTHON = unique_blocks("python")
SHELL = unique_blocks("bash")
DEMO = [(i, code) for i, lang, code in code_blocks(ROOT / "docs" / "demo.md") if lang == "python"]


def test_the_quick_start_covers_select_apply_vllm_and_lmms_eval():
    code = "\n".join(code for _, code in PYTHON + SHELL)
    for needed in ("visprune.select(", "visprune.apply(", "vllm serve", "LLM(", "lmms_eval"):
        assert needed in code, needed
    assert all(language in ("python", "bash") for p in PAGES for _, language, _ in code_blocks(p))


@pytest.mark.parametrize("code", [c for _, c in PYTHON], ids=[i for i, _ in PYTHON])
def test_python_block_runs(code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    if "from vllm" in code:
        for overrides in vllm_overrides(code):
            assert parse_settings(overrides["visprune"]).method is not None
        return
    exec(compile(code, "quick start", "exec"), {"__name__": "quickstart"})


@pytest.mark.parametrize("code", [c for _, c in DEMO], ids=[i for i, _ in DEMO])
def test_demo_page_python_block_runs(code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "demo page", "exec"), {"__name__": "demo_page"})


def _check_pip(command: str) -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = extras["optional-dependencies"]
    words = shlex.split(command)
    if "-c" in words:
        assert (ROOT / words[words.index("-c") + 1]).is_file()
    for requirement in words[2:]:
        named = re.fullmatch(r"(?:\.|visprune)\[([\w,-]+)\]", requirement)
        if named:
            assert set(named[1].split(",")) <= set(extras), requirement


def _check_make(command: str) -> None:
    makefile = (ROOT / "Makefile").read_text()
    for target in shlex.split(command)[1:]:
        assert re.search(rf"^{re.escape(target)}:", makefile, re.MULTILINE), target


def _check_vllm_serve(command: str) -> None:
    words = shlex.split(command)
    overrides = json.loads(words[words.index("--hf-overrides") + 1])
    assert parse_settings(overrides["visprune"]).method is not None


def _run(script: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "MPLBACKEND": "Agg"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.parametrize("script", [c for _, c in SHELL], ids=[i for i, _ in SHELL])
def test_shell_block_runs_or_is_checked(script, tmp_path):
    lmms_eval = []
    for command in commands(script):
        program = command.split()[0]
        if command.startswith(("pip install", "python -m pip install")):
            _check_pip(command.removeprefix("python -m "))
        elif program == "make":
            _check_make(command)
        elif command.startswith("vllm serve"):
            _check_vllm_serve(command)
        elif program == "visprune":
            done = _run(command, tmp_path)
            assert done.returncode == 0, done.stderr[-3000:]
        elif command.startswith(("TASKS=$(python -c", "python -m lmms_eval")):
            lmms_eval.append(command)
        else:
            pytest.fail(f"a quick-start command this test neither runs nor checks: {command}")
    if lmms_eval:
        # Run from the repository root, where the block's relative checkpoint path points.
        done = _run("\n".join(lmms_eval), ROOT)
        assert done.returncode == 0, done.stderr[-3000:]
        assert re.search(r"\|visprune_demo\|.*\|exact_match\|", done.stdout), done.stdout[-3000:]
