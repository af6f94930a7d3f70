"""Structured SVD (``bora_ref.singular_values``) against the dense SVD of the formed ΔW.

Run: ``.venv/bin/python benchmarks/bench_svd.py`` (about a minute on 2 cores; ``--quick`` skips
2048²; prefix ``OPENBLAS_NUM_THREADS=1`` for a single-thread comparison of both paths). For each shape it prints the best-of-N wall time of both paths (the dense time excludes
forming ΔW, which favours the dense path), their ratio, and the largest difference of the
singular values relative to σ₁. Targets (issue 3): >= 3000x faster at 2048², r = 8, b = 8, and
equal within 1e-12 σ₁. The tall 11008 x 4096 case (LLaMA-2-7B's up/gate projection) runs the
structured path only: its dense SVD would take minutes.
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from threadpoolctl import threadpool_info

from bora_ref import numpy_ref, singular_values


def best_time(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """Smallest wall time of ``repeats`` calls (the least disturbed by other load) and the last result."""
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="skip the 2048² dense SVD")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    r, b = 8, 8
    blas = [f"{i['internal_api']} x{i['num_threads']}" for i in threadpool_info() if i["user_api"] == "blas"]
    print(f"numpy {np.__version__}, BLAS {', '.join(blas)} threads, {platform.machine()}, r={r}, b={b}")
    print(f"{'shape':>13} {'structured':>12} {'dense':>10} {'ratio':>9} {'max|Δσ|/σ₁':>12}")
    rng = np.random.default_rng(args.seed)
    cases = [(1024, 1024, True), (2048, 2048, not args.quick), (11008, 4096, False)]
    for m, n, dense in cases:
        B, A, sigma = rng.standard_normal((m, r)), rng.standard_normal((r, n)), rng.standard_normal((b, b, r))
        t_struct, S = best_time(lambda: singular_values(B, A, sigma), repeats=20)
        shape = f"{m}x{n}"
        if not dense:
            print(f"{shape:>13} {t_struct * 1e3:>10.2f}ms {'-':>10} {'-':>9} {'-':>12}")
            continue
        delta = numpy_ref.delta_weight(B, A, sigma)  # (m, n), formed outside the timing
        t_dense, S_dense = best_time(lambda: np.linalg.svd(delta, compute_uv=False), repeats=2 if m > 1024 else 3)
        err = np.abs(S - S_dense).max() / S_dense[0]
        print(f"{shape:>13} {t_struct * 1e3:>10.2f}ms {t_dense:>9.2f}s {t_dense / t_struct:>8.0f}x {err:>12.1e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
