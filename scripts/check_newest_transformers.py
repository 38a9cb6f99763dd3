"""Is the newest transformers release ready to be added to the tested range?

When the registry's newest transformers is newer than ``visprune.compat.TESTED_RANGE``, install
it into a virtualenv of its own (the project, its test extras, then that release over the pinned
range), run the model-facing tests on it (less the tests that check the range itself) and print
one line: ``transformers X.Y passes: widen the range`` or the tests that fail. When the newest
release already lies in the range, say so and do nothing.

Never fails: it reports (exit status 0 whatever it finds, also when the registry cannot be
reached), so CI can run it after the tests without turning red on a release it has not seen.

Usage::

    python scripts/check_newest_transformers.py --venv .venv-next -- tests/test_adapters_*.py ...
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import venv
from pathlib import Path

from packaging.version import InvalidVersion, Version

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from visprune import compat  # noqa: E402

#: Tests that check the installed version against the range: they fail by design on a newer one.
RANGE_MARKER = "tested_range"


def newest_release(listing: str) -> Version | None:
    """The newest version in ``pip index versions`` output (``name (X.Y.Z)`` on its first line)."""
    match = re.search(r"^\S+ \(([^)]+)\)", listing, flags=re.MULTILINE)
    if match is None:
        return None
    try:
        return Version(match.group(1))
    except InvalidVersion:
        return None


def is_newer_than_range(version: Version) -> bool:
    """Whether ``version`` lies above the tested range (a patch of its newest minor does not)."""
    high = Version(compat.TESTED_RANGE[1])
    return version.release[:2] > high.release[:2]


def failed_tests(report: str) -> list[str]:
    """The test ids pytest's ``-ra`` summary lists as FAILED or ERROR."""
    return re.findall(r"^(?:FAILED|ERROR) (\S+)", report, flags=re.MULTILINE)


def verdict(version: Version, returncode: int, report: str) -> str:
    """The one line to print for a test run on ``version``."""
    minor = f"{version.major}.{version.minor}"
    if returncode == 0:
        return f"transformers {minor} passes: widen the range (newest release {version})"
    failures = failed_tests(report)
    if not failures:
        tail = report.strip().splitlines()[-1:] or ["no output"]
        return f"transformers {version} could not be tested (pytest exit {returncode}): {tail[0]}"
    listed = ", ".join(failures[:10]) + (f" and {len(failures) - 10} more" if failures[10:] else "")
    return f"transformers {version} fails {len(failures)} model-facing tests: {listed}"


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, check=False, **kwargs)


def install(venv_dir: Path, version: Version) -> str | None:
    """The project with its test extras, then ``transformers==version``; an error text or None."""
    python = venv_dir / "bin" / "python"
    if not python.exists():
        venv.create(venv_dir, with_pip=True)
    pip = [str(python), "-m", "pip", "install", "-q", "-c", str(ROOT / "constraints.txt")]
    # Two steps: the project pins the tested range, which the release lies outside of.
    for step in (["-e", f"{ROOT}[test,eval]"], [f"transformers=={version}"]):
        done = run([*pip, *step])
        if done.returncode:
            return f"pip install {' '.join(step)} failed: {done.stderr.strip()[-300:]}"
    # As in the test virtualenvs: the start-up file that declares torchvision's operator schemas.
    purelib = run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])
    schemas = ROOT / "tests" / "vllm_serving"
    Path(purelib.stdout.strip(), "visprune_torchvision_schemas.pth").write_text(
        f"import sys; sys.path.insert(0, {str(schemas)!r}); import torchvision_schemas\n"
    )
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--venv", type=Path, default=ROOT / ".venv-next")
    parser.add_argument("tests", nargs="+", help="the model-facing test files")
    args = parser.parse_args(argv)

    listing = run([sys.executable, "-m", "pip", "index", "versions", "transformers"])
    newest = newest_release(listing.stdout)
    if newest is None:
        print(f"transformers check skipped: the registry did not answer ({listing.stderr.strip()})")
        return 0
    low, high = compat.TESTED_RANGE
    if not is_newer_than_range(newest):
        print(
            f"transformers {newest} is the newest release and lies in the tested range "
            f"({low} to {Version(high).major}.{Version(high).minor}.x): nothing to widen"
        )
        return 0
    error = install(args.venv, newest)
    if error is not None:
        print(f"transformers {newest} could not be installed: {error}")
        return 0
    python = args.venv / "bin" / "python"
    done = run(
        [
            str(python),
            "-m",
            "pytest",
            "-q",
            "-ra",
            "-p",
            "no:cacheprovider",
            "-m",
            f"not {RANGE_MARKER}",
            *args.tests,
        ],
        cwd=ROOT,
    )
    print(verdict(newest, done.returncode, done.stdout))
    return 0


if __name__ == "__main__":
    sys.exit(main())
