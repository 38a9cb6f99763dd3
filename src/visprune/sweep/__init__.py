"""``visprune sweep``: methods x budgets (x positions) on a model and tasks, recorded in
``results.jsonl`` and drawn as ``results.md``, ``accuracy_vs_tokens.png`` and
``accuracy_vs_flops.png``.

From Python::

    from visprune.sweep import execute, prepare, render

    sweep = prepare(methods=["divprune", "random"], budgets=[7, 14], limit=50, out="runs/demo")
    render(execute(sweep), sweep.out)
"""

from .grid import UNPRUNED, Configuration, plan
from .run import Sweep, execute, prepare, render

__all__ = ["UNPRUNED", "Configuration", "Sweep", "execute", "plan", "prepare", "render"]
