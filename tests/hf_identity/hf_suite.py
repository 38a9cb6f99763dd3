"""Import transformers' common model tests from the fetched sdist (see ``fetch_suite.py``).

The sdist's ``tests/`` folder is no package of its own (its modules import each other
relatively), so it is mounted as the package ``transformers_suite``, whose path also holds
``missing/``: stand-ins for the two modules the sdist leaves out.
"""

from __future__ import annotations

import importlib
import os
import sys
import types
from pathlib import Path

import transformers
from fetch_suite import suite_dir

ROOT = Path(__file__).resolve().parents[2]
#: The cache ``make test-hf-identity`` fills; ``VISPRUNE_HF_TESTS`` overrides it.
CACHE = Path(os.environ.get("VISPRUNE_HF_TESTS", ROOT / ".transformers-tests"))
SUITE = suite_dir(CACHE, transformers.__version__)
PACKAGE = "transformers_suite"


def available() -> bool:
    """Whether the suite of the installed transformers has been fetched."""
    return (SUITE / "tests" / "test_modeling_common.py").is_file()


def load(module: str) -> types.ModuleType:
    """``transformers_suite.<module>`` (e.g. ``test_modeling_common``) from the fetched sdist."""
    if PACKAGE not in sys.modules:
        if not available():
            raise RuntimeError(
                f"transformers' test suite {transformers.__version__} is not in {CACHE}: run "
                "`make test-hf-identity` or `python tests/hf_identity/fetch_suite.py`."
            )
        sys.path.append(str(SUITE / "site"))
        package = types.ModuleType(PACKAGE)
        package.__path__ = [str(SUITE / "tests"), str(Path(__file__).parent / "missing")]
        sys.modules[PACKAGE] = package
    return importlib.import_module(f"{PACKAGE}.{module}")
