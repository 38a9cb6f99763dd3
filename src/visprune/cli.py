"""The ``visprune`` command line."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence

from . import __version__
from .registry import METHODS


def _methods_table() -> str:
    rows = [("name", "stage", "text", "parameters")]
    for name in METHODS.names():
        cls = METHODS[name]
        text = "required" if "text" in cls.requires else "optional" if cls.uses else "no"
        params = ", ".join(
            f"{field.name}={field.default!r}"
            for field in dataclasses.fields(cls)
            if field.name != "budget"
        )
        rows.append((name, cls.stage, text, params or "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row[:3], widths, strict=True))
        + "  "
        + row[3]
        for row in rows
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="visprune", description="Training-free visual-token pruning for multimodal LLMs."
    )
    parser.add_argument("--version", action="version", version=f"visprune {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser("methods", help="list the selection methods and their parameters")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "methods":
        print(_methods_table())
        return 0
    parser.print_help(sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
