"""``results.md``: the sweep's records as one markdown table per task."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .grid import UNPRUNED, format_budget


def by_task(records: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Records grouped per task, tasks and records in file order, the reference first."""
    tasks: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        tasks.setdefault(record["task"], []).append(record)
    return {
        task: sorted(rows, key=lambda r: r["method"] != UNPRUNED) for task, rows in tasks.items()
    }


def metric_names(records: Sequence[dict[str, Any]]) -> list[str]:
    """Every metric name of ``records`` in first-seen order."""
    names: dict[str, None] = {}
    for record in records:
        names.update(dict.fromkeys(record["metrics"]))
    return list(names)


def is_share(records: Sequence[dict[str, Any]], name: str) -> bool:
    """Whether metric ``name`` is a share in [0, 1] in every record (shown in %)."""
    values = [r["metrics"][name] for r in records if name in r["metrics"]]
    return bool(values) and all(0.0 <= v <= 1.0 for v in values)


def format_metric(value: float | None, share: bool) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.1f}" if share else f"{value:.4g}"


def format_ratio(ratio: float | None) -> str:
    """A prefill FLOPs ratio as a percentage of the unpruned prefill."""
    return "-" if ratio is None else f"{100 * ratio:.1f}%"


def caption(records: Sequence[dict[str, Any]], task: str | None = None) -> str:
    """``model: M · task: T · limit: N · date`` of ``records`` (of ``task`` if given)."""
    chosen = [r for r in records if task is None or r["task"] == task]
    models = ", ".join(dict.fromkeys(str(r["model"]) for r in chosen))
    tasks = ", ".join(dict.fromkeys(r["task"] for r in chosen))
    limits = ", ".join(dict.fromkeys(str(r["limit"]) for r in chosen))
    dates = sorted({r["date"] for r in chosen})
    when = dates[0] if len(dates) == 1 else f"{dates[0]} to {dates[-1]}"
    return f"model: {models} · task: {tasks} · limit: {limits} · {when}"


def render(records: Sequence[dict[str, Any]], command: str | None = None) -> str:
    """The markdown of ``results.md``: the command, the versions, then :func:`tables`."""
    lines = ["# visprune sweep", ""]
    if command:
        lines += [f"Command: `{command}`", ""]
    if records:
        versions = records[-1]["versions"]
        lines += ["Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()), ""]
    return "\n".join(lines) + "\n" + tables(records)


def tables(records: Sequence[dict[str, Any]]) -> str:
    """One markdown table per task.

    Per task: method, budget (a count or a share of each image's tokens), positions, the visual
    tokens the language model received per prompt (mean, of how many unpruned), the exact
    prefill FLOPs relative to unpruned, then every metric (shares in %). Measured time is not
    shown: on a small model it is mostly fixed costs and noise; ``seconds`` stays in the
    records.
    """
    lines: list[str] = []
    for task, rows in by_task(records).items():
        names = metric_names(rows)
        shares = {name: is_share(rows, name) for name in names}
        lines += [f"## {task}", "", caption(rows) + "; prefill FLOPs relative to unpruned.", ""]
        heads = [f"{n} (%)" if shares[n] else n for n in names]
        lines.append(
            "| method | budget | positions | visual tokens | prefill FLOPs | "
            + " | ".join(heads)
            + " |"
        )
        lines.append("|---|---:|---|---:|---:|" + "---:|" * len(names))
        for r in rows:
            tokens = f"{r['visual_tokens']:.4g} of {r['visual_tokens_unpruned']:.4g}"
            metrics = " | ".join(
                format_metric(r["metrics"].get(name), shares[name]) for name in names
            )
            lines.append(
                f"| {r['method']} | {format_budget(r['budget'])} | {r['positions'] or '-'} | "
                f"{tokens} | {format_ratio(r['prefill_flops_ratio'])} | {metrics} |"
            )
        lines.append("")
    return "\n".join(lines)
