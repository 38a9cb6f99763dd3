"""Collect the identity run only when asked: it takes minutes, ``make test-hf-identity`` runs it.

It is asked for by naming this folder (or a file in it) on the pytest command line, or by
setting ``VISPRUNE_HF_IDENTITY`` (``keepall`` or ``none``, see ``hf_wrapping.py``).
"""

from __future__ import annotations

import os
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _named(arg: str) -> bool:
    path = Path(arg.split("::")[0]).resolve()
    return path == HERE or HERE in path.parents


def pytest_ignore_collect(collection_path, config):
    if os.environ.get("VISPRUNE_HF_IDENTITY") or any(_named(arg) for arg in config.args):
        return None
    return True
