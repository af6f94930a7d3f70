"""``bora-ref report`` (the main job) and ``bora-ref rank``: the rank analysis from the command line.

``report`` runs the sweeps of :mod:`bora_ref.sweep` on the shipped layer shapes of real models
and writes an output folder: ``report.md`` (the findings, with tables and figures), one CSV per
table and the PNG figures of :mod:`bora_ref.plots`; stdout gets a short summary. ``rank``
analyses one ``(m, n, r, b)`` configuration.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ._arrays import single_blas_thread
from ._report_md import ABLATION, HEATMAP, SPECTRA, render_report
from ._validation import BoRAValueError, check_b, check_int
from .measures import rank_measures
from .params import best_b, equal_budget_lora_rank, param_count, sum_param_counts
from .plots import plot_ablation, plot_block_heatmap, plot_overhead_vs_b, plot_rank_vs_b, plot_spectra
from .rank import factor_rank_info, rank_bound
from .svd import singular_values
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

__all__ = ["DEFAULT_BS", "DEFAULT_OUT", "DEFAULT_RS", "register", "write_report"]

DEFAULT_RS = (4, 8, 16)
DEFAULT_BS = (1, 2, 4, 8, 16)
DEFAULT_OUT = "bora-report"


def _write_atomic(path: Path, write: Callable[[Path], object]) -> None:
    """Write through a temporary file and rename it: a reader never sees a half-written file."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _records(rows: Sequence[Any]) -> list[dict[str, Any]]:
    """Dataclass or NamedTuple rows as dicts (CSV records)."""
    return [r._asdict() if hasattr(r, "_asdict") else dataclasses.asdict(r) for r in rows]


def _csv(path: Path, records: Sequence[dict[str, Any]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(records[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    _write_atomic(path, lambda p: p.write_text(buffer.getvalue(), encoding="utf-8"))


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
        out: output folder. models: names from :func:`bora_ref.sweep.shipped_models` (default all).
        rs, bs: ranks per block and block counts of the sweep. seed: seed of every random factor.
        progress: tqdm bars (``None``: only on a terminal).

    Returns:
        A summary: ``configs``, ``attained``, ``max_overhead`` (a ``SweepRow``), ``collapse_ok``,
        ``collapse_total``, ``files`` (paths written), ``seconds``.

    Raises:
        ValueError: unknown model, invalid ``r``/``b`` for a shape, or ``out`` is not a usable folder
            (checked before anything is computed or written).
    """
    start = time.perf_counter()
    shapes = distinct_shapes(load_model_shapes(models))
    rs = [check_int("r", r, minimum=1) for r in rs]
    bs = [check_int("b", b, minimum=1) for b in bs]
    for s in shapes:
        for b in bs:
            check_b(b, s.m, s.n)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise BoRAValueError(f"out must be a folder, but {str(out)!r} exists and is not one")
    seed = check_int("seed", seed, minimum=0)

    rows = rank_sweep(shapes, rs, bs, seed=seed, progress=progress)
    r_mid = rs[len(rs) // 2]  # the r of the collapse sweep, the parameter table and the rank-vs-b figure
    collapse = collapse_sweep(shapes, [r_mid], [b for b in bs if b > 1] or bs, seed=seed, progress=progress)
    ablation = partial_sigma_ablation(*ABLATION, seed=seed)
    spectra, measures = _spectra_section(seed)
    params = _model_params(shapes, r_mid, bs)

    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BoRAValueError(f"out: cannot create the folder {str(out)!r}: {exc}") from None
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
        _write_atomic(out / name, lambda p, fig=fig: fig.savefig(p, format="png", dpi=110))
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
    _write_atomic(out / "report.md", lambda p: p.write_text(markdown, encoding="utf-8"))
    summary["files"] = sorted(str(out / name) for name in [*figures, *tables, "report.md"])
    return summary


def _run_report(args: argparse.Namespace) -> int:
    summary = write_report(args.out, models=args.models, rs=args.r, bs=args.b, seed=args.seed)
    worst = summary["max_overhead"]
    print(f"bora-ref report: {summary['configs']} configurations in {summary['seconds']:.1f} s")
    print(f"  bound attained by random factors in {summary['attained']}/{summary['configs']} configurations")
    print(f"  max Σ overhead over LoRA: {worst.overhead_pct:.2f} % ({worst.model} {worst.module}, b={worst.b})")
    print(f"  Σ collapse (separable ≤ r, identical = LoRA) in {summary['collapse_ok']}/{summary['collapse_total']}")
    print(f"wrote {Path(args.out) / 'report.md'} and {len(summary['files']) - 1} more files")
    return 0 if summary["attained"] == summary["configs"] else 1


def _run_rank(args: argparse.Namespace) -> int:
    m, n, r, b = args.m, args.n, args.r, args.b
    bound = rank_bound(m, n, r, b)  # validates the shape first
    B, A, sigma = sample_factors(m, n, r, b, sigma=args.sigma, seed=args.seed)
    info = factor_rank_info(B, A, sigma)
    mm = rank_measures(info.singular_values)
    pc = param_count(m, n, r, b)
    print(f"BoRA update of a {m} x {n} weight, r={r}, b={b}, sigma={args.sigma}, seed={args.seed}")
    print(f"  rank bound               {bound}")
    print(f"  measured rank            {info.rank}  (structured SVD; tol {info.tol:.3g}, gap sigma_k/sigma_k+1 {info.gap:.3g})")
    print(f"  LoRA rank (same r)       {min(r, m, n)}")
    print(f"  LoRA rank (same budget)  {min(equal_budget_lora_rank(m, n, r, b), m, n)}")
    print(f"  parameters               LoRA {pc.lora:,} + sigma {pc.sigma:,} = {pc.total:,} (+{pc.overhead_pct:.2f} %)")
    print(f"  best b for this shape    {best_b(m, n)}  (sqrt(m + n) = {(m + n) ** 0.5:.1f})")
    print(f"  effective rank {mm.effective:.1f}, stable rank {mm.stable:.1f}, "
          f"energy rank 90 % {mm.energy_90}, 99 % {mm.energy_99}")
    return 0


_REPORT_HELP = """\
Measure the rank of BoRA updates on the layer shapes of real models (LLaMA-2-7B, Qwen2.5-0.5B,
Qwen2.5-7B, MiniLM-L6) and compare it with the rank bound, LoRA, and LoRA with the same number
of parameters; add the parameter accounting, the Σ-collapse checks, a partial-Σ ablation and
the rank measures. Ranks come from the exact structured SVD, so even 18944 x 3584 layers take
milliseconds."""

_REPORT_EPILOG = """\
output folder:
  report.md                        findings, tables and figures
  sweep.csv params.csv collapse.csv ablation.csv measures.csv
  rank_vs_b.png spectra.png overhead_vs_b.png ablation.png block_heatmap.png

exit status: 0 when random factors attain the bound in every configuration, 1 otherwise,
2 on invalid arguments.

example:
  bora-ref report --out /tmp/bora --models MiniLM-L6 --r 8 --b 2 4 8"""

_RANK_HELP = """\
Analyse one BoRA configuration: draw Gaussian factors B (m, r), A (r, n) and sigma (b, b, r),
and print the rank bound, the measured rank (exact structured SVD) with the gap at the cut,
LoRA's rank with the same r and with the same parameter budget, the parameter counts, the best
b for the shape and the effective/stable/energy ranks."""


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``report`` and ``rank`` subcommands to the ``bora-ref`` parser."""
    fmt = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser("report", help="rank and parameter report on real model shapes (the main job)",
                       description=_REPORT_HELP, epilog=_REPORT_EPILOG, formatter_class=fmt)
    p.add_argument("--out", default=DEFAULT_OUT, metavar="DIR",
                   help=f"output folder, created if missing; the report's files in it are replaced, other files kept "
                        f"(default: {DEFAULT_OUT})")
    p.add_argument("--models", nargs="+", choices=shipped_models(), metavar="NAME",
                   help=f"models to include (default: all): {', '.join(shipped_models())}")
    p.add_argument("--r", nargs="+", type=int, default=list(DEFAULT_RS), metavar="R",
                   help=f"ranks per block to sweep (default: {' '.join(map(str, DEFAULT_RS))})")
    p.add_argument("--b", nargs="+", type=int, default=list(DEFAULT_BS), metavar="B",
                   help=f"block counts to sweep, each <= min(m, n) of every layer (default: {' '.join(map(str, DEFAULT_BS))})")
    p.add_argument("--seed", type=int, default=0, help="seed of every random factor (default: 0)")
    p.set_defaults(func=_run_report)

    q = sub.add_parser("rank", help="rank, bound and parameters of one (m, n, r, b) configuration",
                       description=_RANK_HELP, formatter_class=fmt,
                       epilog="example:\n  bora-ref rank --m 4096 --n 4096 --r 8 --b 16 --sigma separable")
    q.add_argument("--m", type=int, required=True, help="out_features: rows of the weight and of B")
    q.add_argument("--n", type=int, required=True, help="in_features: columns of the weight and of A")
    q.add_argument("--r", type=int, required=True, help="rank of each block product, >= 1")
    q.add_argument("--b", type=int, required=True, help="blocks per side, 1 <= b <= min(m, n)")
    q.add_argument("--sigma", choices=SIGMA_KINDS, default="random",
                   help="Σ structure: random (generic), separable (u_i * v_j: rank <= r), identical (LoRA) (default: random)")
    q.add_argument("--seed", type=int, default=0, help="seed of the random factors (default: 0)")
    q.set_defaults(func=_run_rank)
