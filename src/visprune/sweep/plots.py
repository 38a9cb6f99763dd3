"""The sweep's two pictures, drawn with matplotlib (the ``plot`` extra; imported only here).

* ``accuracy_vs_tokens.png``: per task and metric a panel, one line per method over the visual
  tokens kept, the unpruned model as a horizontal reference, the ``random`` and ``uniform``
  baselines dashed.
* ``accuracy_vs_flops.png``: the same points over the exact prefill FLOPs relative to
  unpruned, with the Pareto front (no other point is both cheaper and better) marked.

Both use the Okabe-Ito palette (safe for the common colour-vision deficiencies) and a distinct
marker per method, so lines stay apart in grey print too; the legend sits outside the panels and
a caption line names the model, tasks, limit and date.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .grid import UNPRUNED
from .table import by_task, caption, is_share

#: Okabe & Ito (2008), "Color Universal Design": six of its colours (black is the reference,
#: yellow too faint on white).
OKABE_ITO = ("#E69F00", "#56B4E9", "#009E73", "#0072B2", "#D55E00", "#CC79A7")
#: Line styles of the first, second ... round through the colours (dashed is for baselines).
ROUNDS = ("-", "-.", ":")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h", "p", "*", "d")
#: Baselines that select without looking at the image: drawn dashed, in greys (one grey per
#: line, in order).
BASELINES = ("random", "uniform")
GREYS = ("#555555", "#999999", "#222222", "#bbbbbb")
REFERENCE_COLOUR = "#000000"


def _matplotlib() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise ImportError(
            "the sweep's plots need matplotlib: pip install 'visprune[plot]'"
        ) from None
    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def _series_name(record: dict[str, Any], several_positions: bool) -> str:
    name = record["method"]
    if several_positions and record["positions"]:
        name += f" ({record['positions']})"
    return name


def _series(records: Sequence[dict[str, Any]]) -> tuple[bool, list[str], dict[str, dict]]:
    """Whether a method ran at several position modes (then each is its own line), the line
    names in first-seen order, and their styles."""
    modes: dict[str, set] = {}
    for r in records:
        modes.setdefault(r["method"], set()).add(r["positions"])
    several = any(len(found) > 1 for method, found in modes.items() if method != UNPRUNED)
    pruned = [r for r in records if r["method"] != UNPRUNED]
    names = list(dict.fromkeys(_series_name(r, several) for r in pruned))
    return several, names, styles(names)


def styles(names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Colour, marker and line style per series name (same in both pictures)."""
    chosen: dict[str, dict[str, Any]] = {}
    colour = grey = 0
    for i, name in enumerate(names):
        method = name.split(" (")[0]
        if method in BASELINES:
            style = {"color": GREYS[grey % len(GREYS)], "linestyle": "--"}
            grey += 1
        else:
            round_ = ROUNDS[colour // len(OKABE_ITO) % len(ROUNDS)]
            style = {"color": OKABE_ITO[colour % len(OKABE_ITO)], "linestyle": round_}
            colour += 1
        chosen[name] = {**style, "marker": MARKERS[i % len(MARKERS)]}
    return chosen


def _panels(records: Sequence[dict[str, Any]]) -> list[tuple[str, str, list[dict[str, Any]]]]:
    """``(task, metric, records)`` per panel: every top-level metric of every task (metrics
    named ``metric/part`` are breakdowns, left to the table)."""
    panels = []
    for task, rows in by_task(records).items():
        names: dict[str, None] = {}
        for r in rows:
            names.update(dict.fromkeys(n for n in r["metrics"] if "/" not in n))
        panels += [(task, name, rows) for name in names]
    return panels


def _figure(plt: Any, count: int, title: str) -> tuple[Any, list[Any]]:
    columns = min(count, 2)
    rows = (count + columns - 1) // columns
    figure, axes = plt.subplots(
        rows, columns, figsize=(5.2 * columns + 2.6, 3.9 * rows + 1.1), squeeze=False
    )
    for extra in axes.flat[count:]:
        extra.set_visible(False)
    figure.suptitle(title, fontsize=14, fontweight="bold")
    return figure, list(axes.flat[:count])


def _finish(figure: Any, axes: list[Any], records: Sequence[dict[str, Any]], path: Path) -> Path:
    """Legend at the right, outside the panels; caption at the bottom; save at 150 dpi."""
    handles: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
    rows = axes[0].get_gridspec().nrows
    height = figure.get_figheight()
    figure.legend(
        handles.values(),
        handles.keys(),
        loc="center left",
        bbox_to_anchor=(1 - 2.4 / figure.get_figwidth(), 0.5),
        frameon=False,
        fontsize=9,
        title="method",
    )
    figure.text(0.01, 0.012, caption(records), fontsize=8.5, color="#333333", ha="left")
    figure.subplots_adjust(
        left=0.75 / figure.get_figwidth(),
        right=1 - 2.6 / figure.get_figwidth(),
        top=1 - 0.75 / height,
        bottom=0.85 / height,
        hspace=0.55 if rows > 1 else 0.2,
        wspace=0.3,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=150)
    return path


def _flops_percent(record: dict[str, Any]) -> float | None:
    """The x of ``accuracy_vs_flops``: prefill FLOPs in % of unpruned (None: not measured)."""
    ratio = record["prefill_flops_ratio"]
    return None if ratio is None else 100 * ratio


def _points(
    rows: Sequence[dict[str, Any]],
    metric: str,
    scale: float,
    name: str,
    several_positions: bool,
    x: Callable[[dict[str, Any]], float | None],
) -> list[tuple[float, float]]:
    """The points ``(x(record), scale * metric)`` of the line ``name``, sorted: its pruned
    records that have ``metric`` and an ``x`` (not None)."""
    points = []
    for r in rows:
        if r["method"] == UNPRUNED or metric not in r["metrics"]:
            continue
        at = x(r)
        if at is not None and _series_name(r, several_positions) == name:
            points.append((at, scale * r["metrics"][metric]))
    return sorted(points)


def _metric_label(metric: str, share: bool) -> str:
    return f"{metric} (%)" if share else metric


def accuracy_vs_tokens(records: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Draw ``accuracy_vs_tokens.png`` from sweep records; returns its path."""
    title, xlabel = "Accuracy against visual tokens kept", "visual tokens kept per prompt (mean)"
    return _draw(records, path, title, xlabel, _tokens_panel)


def _tokens_panel(ax: Any, rows: Sequence[dict[str, Any]], metric: str, scale: float, series):
    """A line per method over the visual tokens kept; the unpruned model a horizontal line."""
    from matplotlib.ticker import MaxNLocator

    several, names, style = series
    for name in names:
        points = _points(rows, metric, scale, name, several, lambda r: r["visual_tokens"])
        if points:
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, label=name, linewidth=1.6, markersize=5.5, **style[name])
    for r in rows:
        if r["method"] == UNPRUNED and metric in r["metrics"]:
            ax.axhline(
                scale * r["metrics"][metric],
                color=REFERENCE_COLOUR,
                linewidth=1.3,
                linestyle=":",
                label=f"unpruned ({r['visual_tokens_unpruned']:.4g} tokens)",
            )
    ax.set_xlim(left=0)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # tokens come whole


def pareto_front(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats: none is cheaper (smaller x) and at least as good
    (larger or equal y), or as cheap and better. Sorted by x.

    Parameters
    ----------
    points : sequence of (cost, value)

    Returns
    -------
    list of (cost, value)
    """
    front: list[tuple[float, float]] = []
    for x, y in sorted(set(points), key=lambda p: (p[0], -p[1])):
        if not front or y > front[-1][1]:
            front.append((x, y))
    return front


def accuracy_vs_flops(records: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Draw ``accuracy_vs_flops.png`` from sweep records; returns its path."""
    title, xlabel = "Accuracy against prefill compute", "prefill FLOPs (% of unpruned)"
    return _draw(records, path, title, xlabel, _flops_panel)


def _flops_panel(ax: Any, rows: Sequence[dict[str, Any]], metric: str, scale: float, series):
    """A line per method over the prefill FLOPs, the unpruned model a star at 100 %, and the
    Pareto front of all the points drawn."""
    several, names, style = series
    every = []
    for name in names:
        points = _points(rows, metric, scale, name, several, _flops_percent)
        if points:
            every += points
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, label=name, linewidth=1.2, markersize=5.5, **style[name])
    for r in rows:
        if r["method"] == UNPRUNED and metric in r["metrics"]:
            point = (100.0, scale * r["metrics"][metric])
            every.append(point)
            ax.plot(
                *point,
                marker="*",
                markersize=13,
                color=REFERENCE_COLOUR,
                linestyle="",
                label=f"unpruned ({r['visual_tokens_unpruned']:.4g} tokens)",
            )
    front = pareto_front(every)
    if front:
        xs, ys = zip(*front, strict=True)
        ax.plot(
            xs,
            ys,
            drawstyle="steps-post",
            color="#bbbbbb",
            linewidth=5,
            alpha=0.6,
            zorder=0,
            label="Pareto front",
        )
    ax.margins(y=0.08)


def _draw(
    records: Sequence[dict[str, Any]],
    path: str | Path,
    title: str,
    xlabel: str,
    draw_panel: Callable[..., None],
) -> Path:
    """What both pictures share: a panel per task and metric (:func:`_panels`), its lines drawn
    by ``draw_panel(ax, rows, metric, scale, series)`` (``scale`` 100 for a share, shown in %;
    ``series`` from :func:`_series`), then titled, labelled and gridded; saved to ``path``."""
    plt = _matplotlib()
    panels = _panels(records)
    series = _series(records)
    figure, axes = _figure(plt, len(panels), title)
    for ax, (task, metric, rows) in zip(axes, panels, strict=True):
        share = is_share(rows, metric)
        draw_panel(ax, rows, metric, 100.0 if share else 1.0, series)
        ax.set_title(f"{task}: {metric}", fontsize=11)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(_metric_label(metric, share))
        ax.grid(True, color="#dddddd", linewidth=0.6)
    return _finish(figure, axes, records, Path(path))


def draw(records: Sequence[dict[str, Any]], folder: str | Path) -> list[Path]:
    """Both pictures into ``folder``; returns their paths."""
    folder = Path(folder)
    return [
        accuracy_vs_tokens(records, folder / "accuracy_vs_tokens.png"),
        accuracy_vs_flops(records, folder / "accuracy_vs_flops.png"),
    ]
