"""The README's and the documentation pages' examples and tables agree with the package, and
no paragraph is written twice across them."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import visprune

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text()
#: The README and every page of the documentation site, by path.
PAGES = {
    path.relative_to(ROOT).as_posix(): path.read_text()
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
}
FAMILY_TABLES = ("README.md", "docs/models.md")
#: A fenced code block: the quick starts are the same code on the README and on a page.
FENCED = re.compile(r"^```.*?^```$", re.MULTILINE | re.DOTALL)


def _paragraphs() -> list[str]:
    return [
        " ".join(block.split())
        for text in PAGES.values()
        for block in re.split(r"\n\s*\n", FENCED.sub("", text))
        if block.strip()
    ]


def test_list_methods_example_shows_every_method():
    shown_anywhere = False
    for text in PAGES.values():
        for start in [m.start() for m in re.finditer(r"visprune\.list_methods\(\)\n", text)]:
            comment = text[start:].split("\n", 1)[1].split("```", 1)[0]
            shown = ast.literal_eval("".join(line.lstrip("# ") for line in comment.splitlines()))
            assert shown == visprune.list_methods()
            shown_anywhere = True
    assert shown_anywhere


def test_the_model_table_holds_every_family_in_one_block():
    for name in FAMILY_TABLES:
        text = PAGES[name]
        table = next(p for p in re.split(r"\n\s*\n", text) if p.startswith("| model family |"))
        rows = table.splitlines()
        assert all(row.startswith("|") for row in rows)
        types = {t for row in rows[2:] for t in re.findall(r"`([a-z0-9_]+)`", row.split("|")[2])}
        assert {"llava", "llava_next", "qwen2_5_vl", "qwen3_vl", "internvl", "gemma3"} <= types
        after = text[text.index(table) + len(table) :]
        assert "\n| " not in after.split("\n#", 1)[0], name


def test_no_paragraph_appears_twice():
    openings = [p[:120] for p in _paragraphs() if len(p) > 200 and not p.startswith(("|", "```"))]
    repeated = {o for o in openings if openings.count(o) > 1}
    assert not repeated, repeated


def test_dart_is_described_as_running_inside_the_language_model():
    text = " ".join(" ".join(PAGES.values()).split())
    assert "which the adapters do not hand to methods" not in text
    assert "`dart` method runs inside the language model" in text


def test_the_readme_stays_short():
    lines = len(README.splitlines())
    assert lines <= 300, f"README.md has {lines} lines: move details into a page under docs/"
