"""The rank/parameter report: sweeps over real layer shapes, figures, Markdown, and its CLI.

[`write_report`][bora_ref.report.writer.write_report] is the main job (``bora-ref report``). Layering:
this package builds on `bora_ref.analysis` and the flat core, never on `bora_ref.nn`.
"""

from __future__ import annotations

from .writer import DEFAULT_BS, DEFAULT_OUT, DEFAULT_RS, write_report

__all__ = ["DEFAULT_BS", "DEFAULT_OUT", "DEFAULT_RS", "write_report"]
