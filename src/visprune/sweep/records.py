"""``results.jsonl``: one JSON object per finished configuration, appended as each finishes, so
an interrupted sweep resumes where it stopped and a finished one re-renders without running."""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .grid import configuration_key

RESULTS = "results.jsonl"
#: Every record holds at least these keys.
FIELDS = (
    "task",
    "method",
    "params",
    "budget",
    "positions",
    "metrics",
    "visual_tokens",
    "visual_tokens_unpruned",
    "prefill_flops_ratio",
    "seconds",
    "model",
    "limit",
    "date",
    "versions",
)


def record_key(record: dict[str, Any]) -> str:
    """The configuration key of a stored record (as :attr:`Configuration.key`)."""
    return configuration_key(
        record["task"], record["method"], record["budget"], record["positions"], record["params"]
    )


def versions() -> dict[str, str]:
    """visprune, torch, transformers (and lmms-eval when it is imported) and Python."""
    import sys

    import torch
    import transformers

    from .. import __version__

    found = {
        "visprune": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }
    if "lmms_eval" in sys.modules:
        from importlib.metadata import PackageNotFoundError, version

        try:
            found["lmms_eval"] = version("lmms_eval")
        except PackageNotFoundError:
            pass
    return found


def load(folder: str | Path) -> list[dict[str, Any]]:
    """The records of ``folder/results.jsonl`` in file order (none when there is no file).

    A last line cut short by an interrupted write is dropped (its configuration runs again);
    any other unreadable line is an error naming the file and line.

    Raises
    ------
    ValueError
        A line that is not a complete record.
    """
    path = Path(folder) / RESULTS
    if not path.is_file():
        return []
    lines = path.read_text().splitlines()
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            if number == len(lines) and not path.read_text().endswith("\n"):
                break  # the write of the last configuration was interrupted
            raise ValueError(
                f"{path}, line {number}, is not JSON; remove that line to run its "
                "configuration again"
            ) from None
        missing = [name for name in FIELDS if name not in record]
        if not isinstance(record, dict) or missing:
            raise ValueError(
                f"{path}, line {number}, is not a sweep record (missing {', '.join(missing)}); "
                "use a new --out folder"
            )
        records.append(record)
    return records


def append(folder: str | Path, record: dict[str, Any]) -> None:
    """Add one record as one line, flushed to disk before returning.

    A file whose last line was cut short is first truncated to its last complete line, so the
    new record starts on a line of its own.
    """
    path = Path(folder) / RESULTS
    _drop_partial_line(path)
    with path.open("a") as file:
        file.write(json.dumps(record) + "\n")  # metrics keep their order
        file.flush()
        os.fsync(file.fileno())


def _drop_partial_line(path: Path) -> None:
    if not path.is_file():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        path.write_bytes(data[: data.rfind(b"\n") + 1])


def latest(records: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The last record of each configuration key (a configuration run twice counts once)."""
    return {record_key(record): record for record in records}
