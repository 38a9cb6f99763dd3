"""The check that tells when a transformers release newer than the tested range passes
(``make check-transformers``, ``scripts/check_newest_transformers.py``): its decisions."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from packaging.version import Version

from visprune import compat

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "check_newest_transformers.py"
spec = importlib.util.spec_from_file_location("check_newest_transformers", SCRIPT)
check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(check)


def test_reads_the_newest_release_from_the_registry_listing():
    listing = "transformers (5.27.1)\nAvailable versions: 5.27.1, 5.27.0, 5.26.0, 5.25.0\n"
    assert check.newest_release(listing) == Version("5.27.1")
    assert check.newest_release("") is None
    assert check.newest_release("WARNING: could not reach the index\n") is None


def test_only_a_newer_minor_is_beyond_the_range():
    major, minor = (int(part) for part in compat.TESTED_RANGE[1].split(".")[:2])
    assert not check.is_newer_than_range(Version(f"{major}.{minor}.7"))
    assert not check.is_newer_than_range(Version(compat.TESTED_RANGE[0]))
    assert check.is_newer_than_range(Version(f"{major}.{minor + 1}.0"))
    assert check.is_newer_than_range(Version(f"{major + 1}.0.0"))


def test_one_line_says_widen_or_lists_the_failures():
    assert check.verdict(Version("5.26.0"), 0, "300 passed\n") == (
        "transformers 5.26 passes: widen the range (newest release 5.26.0)"
    )
    report = (
        "FAILED tests/test_adapters.py::test_identity[llava] - AssertionError\n"
        "ERROR tests/test_cli.py::test_generate - ImportError\n"
        "1 failed, 1 error, 298 passed\n"
    )
    line = check.verdict(Version("5.26.0"), 1, report)
    assert line.startswith("transformers 5.26.0 fails 2 model-facing tests: ")
    assert "tests/test_adapters.py::test_identity[llava]" in line
    assert "tests/test_cli.py::test_generate" in line and "\n" not in line
    many = "".join(f"FAILED tests/t.py::test_{i} - x\n" for i in range(13))
    assert check.verdict(Version("5.26.0"), 1, many).endswith("and 3 more")
    assert "could not be tested" in check.verdict(Version("5.26.0"), 4, "usage: pytest\n")


def test_the_range_tests_carry_the_marker_the_check_deselects():
    source = (SCRIPT.parent.parent / "tests" / "test_compat.py").read_text()
    assert source.count(f"@pytest.mark.{check.RANGE_MARKER}") >= 2
