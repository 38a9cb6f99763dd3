"""The README's examples and tables agree with the package."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import visprune

README = (Path(__file__).parent.parent / "README.md").read_text()


def _paragraphs() -> list[str]:
    return [" ".join(block.split()) for block in re.split(r"\n\s*\n", README) if block.strip()]


def test_list_methods_example_shows_every_method():
    start = README.index("visprune.list_methods()\n")
    comment = README[start:].split("\n", 1)[1].split("```", 1)[0]
    shown = ast.literal_eval("".join(line.lstrip("# ") for line in comment.splitlines()))
    assert shown == visprune.list_methods()


def test_the_model_table_holds_every_family_in_one_block():
    table = next(p for p in re.split(r"\n\s*\n", README) if p.startswith("| model family |"))
    rows = table.splitlines()
    assert all(row.startswith("|") for row in rows)
    types = {t for row in rows[2:] for t in re.findall(r"`([a-z0-9_]+)`", row.split("|")[2])}
    assert {"llava", "llava_next", "qwen2_5_vl", "qwen3_vl", "internvl", "gemma3"} <= types
    assert "\n| " not in README[README.index(table) + len(table) : README.index("## Methods")]


def test_no_paragraph_appears_twice():
    openings = [p[:120] for p in _paragraphs() if len(p) > 200 and not p.startswith(("|", "```"))]
    repeated = {o for o in openings if openings.count(o) > 1}
    assert not repeated, repeated


def test_dart_is_described_as_running_inside_the_language_model():
    assert "which the adapters do not hand to methods" not in README
    assert "`dart` method runs\ninside the language model" in README
