"""``bora-ref report`` (the main job) and ``bora-ref rank``: the rank analysis from the command line.

``report`` calls [`bora_ref.report.writer.write_report`][bora_ref.report.writer.write_report] and prints a short summary; ``rank``
analyses one ``(m, n, r, b)`` configuration.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..analysis.budget import MEMORY_BUDGET_BYTES, check_budget, factor_bytes, structured_svd_bytes
from ..analysis.measures import rank_measures
from ..analysis.params import best_b, equal_budget_lora_rank, param_count
from ..analysis.rank import factor_rank_info, rank_bound
from .sweep import SIGMA_KINDS, sample_factors, shipped_models
from .writer import DEFAULT_BS, DEFAULT_OUT, DEFAULT_RS, write_report

__all__ = ["register"]


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
    check_budget("bora-ref rank", factor_bytes(m, n, r, b) + structured_svd_bytes(m, n, r, b),
                 f"m={m}, n={n}, r={r}, b={b}")  # refuse before drawing the factors
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

_REPORT_EPILOG = f"""\
output folder:
  report.md                        findings, tables and figures
  sweep.csv params.csv collapse.csv ablation.csv measures.csv
  rank_vs_b.png spectra.png overhead_vs_b.png ablation.png block_heatmap.png

exit status: 0 when random factors attain the bound in every configuration, 1 otherwise,
2 on invalid arguments (including a configuration whose working memory would exceed the
memory budget, bora_ref.analysis.budget.MEMORY_BUDGET_BYTES = {MEMORY_BUDGET_BYTES / 1024**3:g} GiB).

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
                       epilog="exit status: 0, or 2 on invalid arguments (including a configuration whose working memory\n"
                              f"would exceed the memory budget of {MEMORY_BUDGET_BYTES / 1024**3:g} GiB, "
                              "bora_ref.analysis.budget.MEMORY_BUDGET_BYTES)\n\n"
                              "example:\n  bora-ref rank --m 4096 --n 4096 --r 8 --b 16 --sigma separable")
    q.add_argument("--m", type=int, required=True, help="out_features: rows of the weight and of B")
    q.add_argument("--n", type=int, required=True, help="in_features: columns of the weight and of A")
    q.add_argument("--r", type=int, required=True, help="rank of each block product, >= 1")
    q.add_argument("--b", type=int, required=True, help="blocks per side, 1 <= b <= min(m, n)")
    q.add_argument("--sigma", choices=SIGMA_KINDS, default="random",
                   help="Σ structure: random (generic), separable (u_i * v_j: rank <= r), identical (LoRA) (default: random)")
    q.add_argument("--seed", type=int, default=0, help="seed of the random factors (default: 0)")
    q.set_defaults(func=_run_rank)
