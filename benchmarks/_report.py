"""Markdown and CSV output: one Markdown file with the header and every table, one CSV per section."""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["Column", "markdown_table", "write_csv"]

Column = tuple[str, str, str]
"""``(header, row key, format spec)``; a missing or NaN value prints as ``-``."""


def _cell(row: Mapping[str, Any], key: str, spec: str) -> str:
    value = row.get(key)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[Column]) -> str:
    """A GitHub-flavoured Markdown table of ``rows`` with numbers right-aligned."""
    lines = [
        "| " + " | ".join(header for header, _, _ in columns) + " |",
        "|" + "|".join(" ---: " if spec else " --- " for _, _, spec in columns) + "|",
    ]
    lines += ["| " + " | ".join(_cell(row, key, spec) for _, key, spec in columns) + " |" for row in rows]
    return "\n".join(lines)


def write_csv(path: Path, rows: Sequence[Mapping[str, Any]], header: Mapping[str, str]) -> None:
    """All keys of ``rows`` (first-seen order) as columns; ``header`` as leading ``# key: value`` lines."""
    keys: dict[str, None] = {}
    for row in rows:
        keys.update(dict.fromkeys(row))
    with path.open("w", newline="", encoding="utf-8") as f:
        for key, value in header.items():
            f.write(f"# {key}: {value}\n")
        writer = csv.DictWriter(f, fieldnames=list(keys))
        writer.writeheader()
        writer.writerows(rows)
