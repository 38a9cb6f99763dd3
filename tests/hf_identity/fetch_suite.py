"""Fetch transformers' common model tests for the installed transformers into a cache folder.

transformers ships ``tests/test_modeling_common.py`` and the other ``tests/test_*_common.py`` /
``*_mixin.py`` modules in its source distribution (not its per-model test files). This script
downloads the sdist of exactly the installed version with pip, extracts its ``tests/`` folder to
``<cache>/transformers-<version>/tests`` and installs the few packages those modules import that
visprune's test extra does not bring (``parameterized``) into ``<cache>/transformers-<version>/
site``. Run it once per transformers version; a second run finds the cache and does nothing.

Usage: ``python tests/hf_identity/fetch_suite.py [CACHE]`` (default ``.transformers-tests``).
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

#: Packages the common test modules import beyond visprune's ``test`` extra.
EXTRA_PACKAGES = ("parameterized",)


def suite_dir(cache: Path, version: str) -> Path:
    """Where the suite of transformers ``version`` lives under ``cache``."""
    return cache / f"transformers-{version}"


def fetch(cache: Path, version: str) -> Path:
    """Download and extract the suite of transformers ``version``; return its folder."""
    target = suite_dir(cache, version)
    if (target / "tests" / "test_modeling_common.py").is_file() and (target / "site").is_dir():
        return target
    pip = [sys.executable, "-m", "pip"]
    with tempfile.TemporaryDirectory() as download:
        subprocess.run(
            [*pip, "download", "-q", "--no-deps", "--no-binary", ":all:", "-d", download,
             f"transformers=={version}"],
            check=True,
        )  # fmt: skip
        (archive,) = Path(download).glob("transformers-*.tar.gz")
        partial = target.with_name(target.name + ".partial")
        with tarfile.open(archive) as sdist:
            members = [m for m in sdist.getmembers() if m.name.split("/")[1:2] == ["tests"]]
            if not any(m.name.endswith("/tests/test_modeling_common.py") for m in members):
                raise SystemExit(f"{archive.name} holds no tests/test_modeling_common.py")
            for member in members:
                member.name = member.name.split("/", 1)[1]  # drop "transformers-<version>/"
            sdist.extractall(partial, members=members, filter="data")
    subprocess.run(
        [*pip, "install", "-q", "--no-deps", "--target", str(partial / "site"), *EXTRA_PACKAGES],
        check=True,
    )
    partial.rename(target)
    return target


def main() -> None:
    import transformers

    cache = Path(sys.argv[1] if len(sys.argv) > 1 else ".transformers-tests")
    print(fetch(cache, transformers.__version__))


if __name__ == "__main__":
    main()
