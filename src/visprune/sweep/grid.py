"""The configurations of a sweep: tasks x (the unpruned reference, then methods x budgets x
positions), each checked before any model loads."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..methods.layer import positions_for

#: The reference every sweep runs first on each task; its records carry ``method="unpruned"``.
UNPRUNED = "unpruned"
#: ``visprune.apply``'s position modes.
POSITIONS = ("compact", "original")


@dataclass(frozen=True)
class Configuration:
    """One point of the sweep on one task.

    Attributes
    ----------
    task : str
        The task's name (``demo``, ``demo-video`` or an lmms-eval task).
    method : str
        A registered method name, or :data:`UNPRUNED`.
    budget : int or float or None
        Tokens kept per image / frame: a count or a fraction (None for the reference).
    positions : str or None
        ``"compact"`` or ``"original"`` (methods that prune inside the language model always keep
        the original positions); None for the reference, or for the model family's default.
    params : dict
        The method's hyperparameters besides the budget (its defaults unless changed).
    """

    task: str
    method: str
    budget: int | float | None = None
    positions: str | None = None
    params: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def key(self) -> str:
        """What identifies this configuration in ``results.jsonl`` (the resume key)."""
        return configuration_key(self.task, self.method, self.budget, self.positions, self.params)

    @property
    def label(self) -> str:
        """A short name for progress bars: ``task: method @ budget (positions)``."""
        if self.method == UNPRUNED:
            return f"{self.task}: {UNPRUNED}"
        where = f" ({self.positions})" if self.positions else ""
        return f"{self.task}: {self.method} @ {format_budget(self.budget)}{where}"


def configuration_key(
    task: str, method: str, budget: Any, positions: str | None, params: dict[str, Any]
) -> str:
    """A canonical JSON string of what a configuration runs (budget 7 and 7.0 differ: a count
    and a fraction are read differently by every method)."""
    budget_text = None if budget is None else f"{type(budget).__name__}:{budget!r}"
    return json.dumps([task, method, budget_text, positions, params], sort_keys=True)


def format_budget(budget: int | float | None) -> str:
    """``7`` for a count, ``11.1%`` for a fraction, ``-`` for none."""
    if budget is None:
        return "-"
    if isinstance(budget, float):
        return f"{budget:.1%}"
    return str(budget)


def parse_list(text: str, option: str) -> list[str]:
    """A comma-separated option value: its non-empty items, stripped, in order, no repeats."""
    items = [item.strip() for item in text.split(",")]
    if not all(items):
        raise ValueError(f"{option} {text!r} has an empty item; separate names with single commas")
    return list(dict.fromkeys(items))


def parse_budget(text: str) -> int | float:
    """A budget as the command line gives it: ``64`` (a count) or ``0.25`` (a fraction)."""
    try:
        value: int | float = int(text)
    except ValueError:
        try:
            value = float(text)
        except ValueError:
            raise ValueError(
                f"budget {text!r} is not a number; give counts (64) or fractions (0.25)"
            ) from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"budget {text!r} must be a positive count or a fraction in (0, 1]")
    return value


def plan(
    tasks: Sequence[str],
    methods: Sequence[str],
    budgets: Sequence[int | float],
    positions: Sequence[str | None] = (None,),
) -> list[Configuration]:
    """Every configuration of the sweep, in run order: per task the unpruned reference, then
    per budget every method at every position mode.

    Parameters
    ----------
    tasks : sequence of str
        Task names (checked by the runner, not here).
    methods : sequence of str
        Registered method names (``keepall`` and ``unpruned`` are the reference, always run).
    budgets : sequence of int or float
        Counts or fractions, each valid for every method.
    positions : sequence of str or None
        Position modes to sweep; None means the model family's default.

    Returns
    -------
    list of Configuration

    Raises
    ------
    ValueError
        An unknown method (with the closest name), a budget or position mode a method refuses,
        or an empty list.
    """
    import visprune
    from visprune.registry import UnknownNameError

    for name, values in (("--tasks", tasks), ("--methods", methods), ("--budgets", budgets)):
        if not values:
            raise ValueError(f"{name} is empty; give at least one")
    for mode in positions:
        if mode is not None and mode not in POSITIONS:
            raise ValueError(f"--positions {mode!r}: choose from {', '.join(POSITIONS)}")
    chosen = [m for m in methods if m.lower() not in ("keepall", UNPRUNED)]
    if not chosen:
        raise ValueError(
            "--methods has only the unpruned reference, which every sweep runs anyway; name at "
            f"least one method ({', '.join(visprune.list_methods())})"
        )
    built = {}
    for name in chosen:
        for budget in budgets:
            try:
                method = visprune.get_method(name.lower(), budget=budget)
                method.num_keep(1)
            except UnknownNameError as error:
                raise ValueError(f"--methods: {str(error).strip(chr(39) + chr(34))}") from None
            except ValueError as error:
                raise ValueError(f"--budgets {budget!r} for {name}: {error}") from None
            built[(name, budget)] = method
    configurations = []
    for task in tasks:
        configurations.append(Configuration(task, UNPRUNED))
        for budget in budgets:
            for name in chosen:
                method = built[(name, budget)]
                params = {k: v for k, v in method.params().items() if k != "budget"}
                modes = [positions_for(method, mode) for mode in positions]
                for mode in dict.fromkeys(modes):
                    configurations.append(
                        Configuration(task, method.name, budget, mode, params=params)
                    )
    return configurations
