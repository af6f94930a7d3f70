"""Issue 16, second round: ``singular_values`` / ``structured_svd`` at HEAD against the working tree.

Run from the repository root: ``git show HEAD:bora_ref/analysis/svd.py > /tmp/svd_head.py`` then
``python benchmarks/results/steps/svd_before_after_2.py /tmp/svd_head.py``. Both versions run in
one process, interleaved call by call, one BLAS thread, process CPU time; medians and IQR.
"""

import importlib.util
import statistics
import sys
import time

import numpy as np
from threadpoolctl import threadpool_limits

from bora_ref.analysis import svd as new

spec = importlib.util.spec_from_file_location("bora_ref.analysis._svd_head", sys.argv[1])  # its relative imports resolve
old = importlib.util.module_from_spec(spec)
spec.loader.exec_module(old)
rng = np.random.default_rng(0)
with threadpool_limits(1, user_api="blas"):
    for m, n, calls in [(2048, 2048, 300), (11008, 4096, 100)]:
        B, A, s = rng.standard_normal((m, 8)), rng.standard_normal((8, n)), rng.standard_normal((8, 8, 8))
        for fn in ("singular_values", "structured_svd"):
            fns = {"old": getattr(old, fn), "new": getattr(new, fn)}
            for f in fns.values():
                f(B, A, s)  # warm-up
            times = {k: [] for k in fns}
            for _ in range(calls if fn == "singular_values" else calls // 3):
                for k, f in fns.items():
                    c = time.process_time()
                    f(B, A, s)
                    times[k].append(time.process_time() - c)
            for k, v in times.items():
                q1, q3 = np.percentile(v, [25, 75]) * 1e6
                print(f"{m}x{n} r=8 b=8 {fn} {k}: median CPU {statistics.median(v) * 1e6:.0f} us (IQR {q1:.0f}-{q3:.0f}, {len(v)} calls)")

# Where the new singular_values spends its time at 2048 x 2048 (same settings; medians of 300 calls each).
from bora_ref.analysis.svd import _core, _reduce, _validated  # noqa: E402

B, A, s = rng.standard_normal((2048, 8)), rng.standard_normal((8, 2048)), rng.standard_normal((8, 8, 8))
core = _core(B, A, s, keep_q=False)[0]
parts = {
    "total singular_values": lambda: new.singular_values(B, A, s),
    "validation (_validated)": lambda: _validated(B, A, s, vectors=False),
    "QR of the 8 row blocks (one batched geqrf)": lambda: _reduce(B.reshape(8, 256, 8), False),
    "QR of the 8 column blocks (one batched geqrf)": lambda: _reduce(A.reshape(8, 8, 256).transpose(1, 2, 0), False),
    "core (both QRs + assembly, _core)": lambda: _core(B, A, s, keep_q=False),
    "SVD of the 64 x 64 core (gesdd)": lambda: np.linalg.svd(core, compute_uv=False),
}
with threadpool_limits(1, user_api="blas"):
    times = {k: [] for k in parts}
    for _ in range(300):
        for k, f in parts.items():
            c = time.process_time()
            f()
            times[k].append(time.process_time() - c)
for k, v in times.items():
    print(f"2048x2048 r=8 b=8 {k}: median CPU {statistics.median(v) * 1e6:.0f} us")
