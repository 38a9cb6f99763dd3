"""Bridges to evaluation and serving frameworks; each module imports its framework on use only.

``lmms_eval`` holds the lmms-eval model wrappers, ``lmms_eval_entry`` the entry point lmms-eval
loads to find them, and ``lmms_eval_tasks/`` the offline demo task (``--include_path``).
"""

from pathlib import Path

#: Folder of the lmms-eval task files shipped with visprune, for ``--include_path``.
LMMS_EVAL_TASKS = Path(__file__).parent / "lmms_eval_tasks"
