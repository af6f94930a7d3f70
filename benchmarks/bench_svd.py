"""Structured SVD (``bora_ref.singular_values``) against the dense SVD of the formed ΔW.

Run: ``python -m benchmarks.bench_svd`` (about two minutes on 2 cores; ``--quick`` skips the
2048² dense SVD). Every shape is measured twice, with NumPy's BLAS at its default thread count
(what users run) and at one thread (``threadpoolctl``), both paths under the same limit. Rounds
are interleaved: round ``k`` runs the dense SVD once and the structured path ``--inner`` times
(their median is the round's time), so load drifts hit both alike. Reported: the median over
rounds of wall time and of process CPU time for each path, the range of the dense wall times
(a wide range means other jobs competed for the cores), their ratio (wall time; at one thread
also CPU time, which other jobs on a shared machine barely disturb), and the largest difference
of the singular values relative to σ₁. The dense time excludes forming ΔW, which favours the
dense path. Target: >= 10,000x at 2048², r = 8, b = 8 at default threads, and equal within
1e-12 σ₁. Also measured, in the same rounds, is the SVD of the structured path's ``(b r, b r)``
core alone (one LAPACK ``gesdd`` call, a floor that no rearrangement of the rest can go below):
``dense / core SVD`` is the ceiling of the ratio on this machine. The tall 11008 x 4096 case
(LLaMA-2-7B's up/gate projection) runs the structured path only: its dense SVD would take
minutes. Results: ``--out`` (``svd.md``, ``svd.csv``) with the machine, versions and load.
Run it on an idle machine: a dense SVD at two threads sharing the cores with other jobs slows
down several-fold, which would inflate every default-thread ratio.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from threadpoolctl import threadpool_info, threadpool_limits

from bora_ref import numpy_ref, singular_values
from bora_ref.analysis.svd import _core, _OneBlasThread

from ._report import markdown_table, write_csv
from ._timing import Clock, machine_info

COLUMNS = [
    ("shape", "shape", ""), ("BLAS threads", "threads", ""), ("structured µs", "struct_us", ".0f"),
    ("structured CPU µs", "struct_cpu_us", ".0f"), ("dense s", "dense_s", ".3f"), ("dense s, range over rounds", "dense_range", ""),
    ("dense CPU s", "dense_cpu_s", ".3f"),
    ("dense / structured (wall)", "ratio", ",.0f"), ("dense / structured (CPU)", "ratio_cpu", ",.0f"),
    ("core SVD µs", "core_svd_us", ".0f"), ("dense / core SVD (ceiling)", "ceiling", ",.0f"),
    ("max abs Δσ / σ₁", "err", ".1e"),
]


def _timed(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, result


def measure(m: int, n: int, r: int, b: int, *, dense: bool, rounds: int, inner: int, rng: np.random.Generator) -> dict[str, Any]:
    """Median wall and CPU times of both paths over interleaved rounds, under the caller's BLAS limit."""
    B, A, sigma = rng.standard_normal((m, r)), rng.standard_normal((r, n)), rng.standard_normal((b, b, r))
    delta = numpy_ref.delta_weight(B, A, sigma) if dense else None  # (m, n), formed outside the timing
    S = singular_values(B, A, sigma)  # warm-up
    with _OneBlasThread():  # as singular_values runs it
        core = _core(B, A, sigma, keep_q=False)[0]  # (b r, b r)

    def core_svd() -> np.ndarray:
        with _OneBlasThread():
            return np.linalg.svd(core, compute_uv=False)

    sw, sc, dw, dc, cw = [], [], [], [], []
    for _ in range(rounds):
        inner_times = [_timed(lambda: singular_values(B, A, sigma))[:2] for _ in range(inner)]
        sw.append(statistics.median(t[0] for t in inner_times))
        sc.append(statistics.median(t[1] for t in inner_times))
        cw.append(statistics.median(_timed(core_svd)[0] for _ in range(inner)))
        if delta is not None:
            w, c, S_dense = _timed(lambda: np.linalg.svd(delta, compute_uv=False))
            dw.append(w)
            dc.append(c)
    row: dict[str, Any] = {"shape": f"{m}x{n}", "m": m, "n": n, "r": r, "b": b, "rounds": rounds, "inner": inner,
                           "struct_us": statistics.median(sw) * 1e6, "struct_cpu_us": statistics.median(sc) * 1e6,
                           "core_svd_us": statistics.median(cw) * 1e6}
    if delta is not None:
        row |= {"dense_s": statistics.median(dw), "dense_range": f"{min(dw):.3f}–{max(dw):.3f}", "dense_cpu_s": statistics.median(dc),
                "err": float(np.abs(S - S_dense).max() / S_dense[0])}
        row["ratio"] = row["dense_s"] / (row["struct_us"] * 1e-6)
        row["ratio_cpu"] = row["dense_cpu_s"] / (row["struct_cpu_us"] * 1e-6)
        row["ceiling"] = row["dense_s"] / (row["core_svd_us"] * 1e-6)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_svd", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="skip the 2048² dense SVD")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds per shape and thread setting")
    parser.add_argument("--inner", type=int, default=50, help="structured calls per round")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)
    r, b = 8, 8
    default = {i["internal_api"]: i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}
    header = {"command": "python -m benchmarks.bench_svd " + " ".join(sys.argv[1:] if argv is None else argv),
              **machine_info(torch.device("cpu"), Clock("wall", torch.device("cpu"))),
              "numpy BLAS (default threads)": ", ".join(f"{k} x{v}" for k, v in default.items()), "r": str(r), "b": str(b),
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    header.pop("torch threads", None)
    header.pop("clock", None)
    for k, v in header.items():
        print(f"{k}: {v}")
    cases = [(1024, 1024, True), (2048, 2048, not args.quick), (11008, 4096, False)]
    rows = []
    for m, n, dense in cases:
        for limit in (None, 1):
            with threadpool_limits(limits=limit, user_api="blas"):
                row = measure(m, n, r, b, dense=dense, rounds=args.rounds, inner=args.inner, rng=np.random.default_rng(args.seed))
            row["threads"] = "default" if limit is None else "1"
            rows.append(row)
            print(" ".join(f"{h}={format(row[k], s) if k in row else '-'}" for h, k, s in COLUMNS), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    header["load average at end"] = " ".join(f"{x:.1f}" for x in os.getloadavg())
    write_csv(args.out / "svd.csv", rows, header)
    text = ["# Structured SVD vs dense SVD", "", *[f"- {k}: `{v}`" for k, v in header.items()], "", markdown_table(rows, COLUMNS)]
    (args.out / "svd.md").write_text("\n".join(text) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
