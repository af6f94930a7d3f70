"""The rank/parameter report (the main job): sweeps on real layer shapes, written as a folder.

[`write_report`][bora_ref.report.writer.write_report] runs the sweeps of [`bora_ref.report.sweep`][bora_ref.report.sweep] on the shipped layer shapes of
real models and writes an output folder: ``report.md`` (the findings, with tables and figures),
one CSV per table and the PNG figures of [`bora_ref.report.plots`][bora_ref.report.plots]. The command line
(``bora-ref report``, ``bora-ref rank``) is `bora_ref.report.cli`.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from .._arrays import single_blas_thread
from .._io import atomic_write
from .markdown import ABLATION, HEATMAP, SPECTRA, render_report
from .._validation import BoRAValueError, check_b, check_int
from ..analysis.budget import check_budget, factor_bytes, structured_svd_bytes
from ..analysis.measures import rank_measures
from ..analysis.params import best_b, equal_budget_lora_rank, param_count, sum_param_counts
from .plots import plot_ablation, plot_block_heatmap, plot_overhead_vs_b, plot_rank_vs_b, plot_spectra
from ..analysis.rank import factor_rank_info, rank_bound
from ..analysis.svd import singular_values
from .sweep import (
    SIGMA_KINDS,
    LayerShape,
    collapse_sweep,
    distinct_shapes,
    load_model_shapes,
    partial_sigma_ablation,
    rank_sweep,
    sample_factors,
    shipped_models,
)

__all__ = ["DEFAULT_BS", "DEFAULT_OUT", "DEFAULT_RS", "write_report"]

DEFAULT_RS = (4, 8, 16)
DEFAULT_BS = (1, 2, 4, 8, 16)
DEFAULT_OUT = "bora-report"


def _check_out(out: Path) -> None:
    """Make sure ``out`` is (or can become) a folder we can write in, before anything is computed.

    Creates ``out`` (and missing parents) and creates and removes one temporary file in it.

    Raises:
        ValueError: ``out`` exists and is not a folder, or it cannot be created or written.
    """
    if out.exists() and not out.is_dir():
        raise BoRAValueError(f"out must be a folder, but {str(out)!r} exists and is not one")
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=out, prefix=".bora-report-probe.", suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise BoRAValueError(f"out={str(out)!r} is not a writable folder: {exc.strerror or exc}") from None


def _records(rows: Sequence[Any]) -> list[dict[str, Any]]:
    """Dataclass or NamedTuple rows as dicts (CSV records)."""
    return [r._asdict() if hasattr(r, "_asdict") else dataclasses.asdict(r) for r in rows]


def _csv(path: Path, records: Sequence[dict[str, Any]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(records[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    atomic_write(path, buffer.getvalue().encode("utf-8"), durable=False)


def _spectra_section(seed: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """LoRA vs BoRA spectra at one shape, every ΔW scaled to unit Frobenius norm, with measures."""
    m, n, r, b = SPECTRA
    r_budget = equal_budget_lora_rank(m, n, r, b)
    cases = {
        f"LoRA r={r}": sample_factors(m, n, r, b, sigma="identical", seed=seed),
        f"BoRA r={r}, b={b}": sample_factors(m, n, r, b, seed=seed),
        f"BoRA r={r}, b={b}, separable Σ": sample_factors(m, n, r, b, sigma="separable", seed=seed),
        f"LoRA r={r_budget} (same parameters)": sample_factors(m, n, r_budget, 1, sigma="identical", seed=seed),
        f"LoRA r={b * r} (same rank)": sample_factors(m, n, b * r, 1, sigma="identical", seed=seed),
    }
    spectra, records = {}, []
    for label, (B, A, sigma) in cases.items():
        norm = float((singular_values(B, A, sigma) ** 2).sum()) ** 0.5  # ‖ΔW‖_F
        info = factor_rank_info(B, A, sigma / norm)
        spectra[f"{label}: rank {info.rank}"] = info.singular_values[: info.rank]  # above the tolerance
        measures = rank_measures(info.singular_values)
        records.append({"update": label, "numerical_rank": info.rank, "gap": info.gap,
                        "effective_rank": measures.effective, "stable_rank": measures.stable,
                        "energy_rank_90": measures.energy_90, "energy_rank_99": measures.energy_99,
                        "paper_threshold_rank": measures.threshold, "paper_sum_sq": measures.energy})
    return spectra, records


def _model_params(shapes: Sequence[LayerShape], r: int, bs: Sequence[int]) -> list[dict[str, Any]]:
    """Whole-model parameter accounting: every layer of every model (``count`` copies each)."""
    records = []
    for model in dict.fromkeys(s.model for s in shapes):
        for b in bs:
            pc = sum_param_counts(param_count(s.m, s.n, r, b) for s in shapes if s.model == model for _ in range(s.count))
            records.append({"model": model, "r": r, "b": b, "lora": pc.lora, "sigma": pc.sigma, "total": pc.total,
                            "overhead_pct": round(pc.overhead_pct, 4)})
    return records


@single_blas_thread
def write_report(
    out: str | os.PathLike[str] = DEFAULT_OUT,
    *,
    models: Sequence[str] | None = None,
    rs: Sequence[int] = DEFAULT_RS,
    bs: Sequence[int] = DEFAULT_BS,
    seed: int = 0,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Run the sweeps on the shipped model shapes and write the report folder.

    Writes ``report.md``, ``sweep.csv``, ``params.csv``, ``collapse.csv``, ``ablation.csv``,
    ``measures.csv`` and ``rank_vs_b.png``, ``spectra.png``, ``overhead_vs_b.png``,
    ``ablation.png``, ``block_heatmap.png`` into ``out`` (created if needed; other files there are
    left alone; each file is replaced atomically).

    Args:
        out: output folder.
        models: names from [`bora_ref.report.sweep.shipped_models`][bora_ref.report.sweep.shipped_models] (default all).
        rs: ranks per block of the sweep.
        bs: block counts of the sweep.
        seed: seed of every random factor.
        progress: tqdm bars (``None``: only on a terminal).

    Returns:
        A summary: ``configs``, ``attained``, ``max_overhead`` (a ``SweepRow``), ``collapse_ok``,
        ``collapse_total``, ``files`` (paths written), ``seconds``.

    Raises:
        ValueError: unknown model, invalid ``r``/``b`` for a shape, a configuration whose working
            memory would exceed [`MEMORY_BUDGET_BYTES`][bora_ref.analysis.budget.MEMORY_BUDGET_BYTES], or ``out`` is not
            a writable folder (all checked before anything is computed; ``out`` is created then).
    """
    start = time.perf_counter()
    if models is not None and (isinstance(models, str) or not isinstance(models, Iterable)):
        raise BoRAValueError(f"models must be a list of model names or None, got {models!r:.80}")
    shapes = distinct_shapes(load_model_shapes(models))
    if not shapes:
        raise BoRAValueError("models must name at least one model, got an empty list")
    for name, values in (("rs", rs), ("bs", bs)):
        if isinstance(values, (str, bytes)) or not isinstance(values, Iterable) or not list(values):
            raise BoRAValueError(f"{name} must be a non-empty list of integers, got {values!r:.80}")
    rs = [check_int("r", r, minimum=1) for r in rs]
    bs = [check_int("b", b, minimum=1) for b in bs]
    for s in shapes:
        for b in bs:
            check_b(b, s.m, s.n)
            for r in rs:  # the sweep draws the factors of every configuration and takes their structured SVD
                check_budget("bora-ref report", factor_bytes(s.m, s.n, r, b) + structured_svd_bytes(s.m, s.n, r, b),
                             f"{s.model} {s.module} m={s.m}, n={s.n}, r={r}, b={b}")
    if not isinstance(out, (str, os.PathLike)) or not os.fspath(out):
        raise BoRAValueError(f"out must be a non-empty folder name, got {out!r}")
    seed = check_int("seed", seed, minimum=0)
    out = Path(out)
    _check_out(out)  # an unusable folder is refused before minutes of computing

    rows = rank_sweep(shapes, rs, bs, seed=seed, progress=progress)
    r_mid = rs[len(rs) // 2]  # the r of the collapse sweep, the parameter table and the rank-vs-b figure
    collapse = collapse_sweep(shapes, [r_mid], [b for b in bs if b > 1] or bs, seed=seed, progress=progress)
    ablation = partial_sigma_ablation(*ABLATION, seed=seed)
    spectra, measures = _spectra_section(seed)
    params = _model_params(shapes, r_mid, bs)

    overview = [next(s for s in shapes if s.model == name) for name in dict.fromkeys(s.model for s in shapes)]
    overview_bs = [b for b in sorted({*bs, 32, 64, 128}) if b <= min(min(s.m, s.n) for s in overview)]
    figures = {
        "rank_vs_b.png": plot_rank_vs_b([x for x in rows if x.r == r_mid]),
        "spectra.png": plot_spectra(spectra, title=f"ΔW spectra above the rank tolerance, {SPECTRA[0]}×{SPECTRA[1]}"),
        "overhead_vs_b.png": plot_overhead_vs_b(overview, overview_bs, r=r_mid),  # first shape of each model
        "ablation.png": plot_ablation(ablation, r=ABLATION[2]),
        "block_heatmap.png": plot_block_heatmap(*sample_factors(*HEATMAP, seed=seed)),
    }
    for name, fig in figures.items():
        # Each file goes through its own uniquely named temporary file: a reader, or a second report written
        # into the same folder at the same time, never sees half a file. Not fsynced: a report is cheap to redo.
        atomic_write(out / name, lambda f, fig=fig: fig.savefig(f, format="png", dpi=110), durable=False)
    tables = {"sweep.csv": _records(rows), "params.csv": params, "collapse.csv": _records(collapse),
              "ablation.csv": _records(ablation), "measures.csv": measures}
    for name, records in tables.items():
        _csv(out / name, records)

    summary = {
        "configs": len(rows), "attained": sum(x.attained for x in rows),
        "max_overhead": max(rows, key=lambda x: x.overhead_pct),
        "collapse_ok": sum(c.separable <= c.r and c.identical == min(c.r, c.m, c.n) for c in collapse),
        "collapse_total": len(collapse), "seconds": time.perf_counter() - start,
    }
    markdown = render_report(summary, shapes, rows, params, collapse, ablation, measures, rs, bs, seed)
    atomic_write(out / "report.md", markdown.encode("utf-8"), durable=False)
    summary["files"] = sorted(str(out / name) for name in [*figures, *tables, "report.md"])
    return summary
