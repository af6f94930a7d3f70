import sys, time, statistics, numpy as np
sys.path.insert(0, "/tmp")
import svd_old_mod as old
from bora_ref.analysis import svd as new
from threadpoolctl import threadpool_limits
rng = np.random.default_rng(0)
B, A, s = rng.standard_normal((2048, 8)), rng.standard_normal((8, 2048)), rng.standard_normal((8, 8, 8))
with threadpool_limits(1, user_api="blas"):
    fns = {"old": lambda: old.singular_values(B, A, s), "new": lambda: new.singular_values(B, A, s)}
    ts = {k: [] for k in fns}
    for i in range(300):
        for k, f in fns.items():
            c = time.process_time(); f(); ts[k].append(time.process_time() - c)
    for k, v in ts.items(): print(k, "2048 r8 b8 median CPU us", round(statistics.median(v) * 1e6, 1), "IQR", np.percentile(v, [25, 75]) * 1e6)
    B, A, s = rng.standard_normal((4, 2000)), rng.standard_normal((2000, 4)), rng.standard_normal((4, 4, 2000))
    c = time.process_time(); old.singular_values(B, A, s); print("old 4x4 r2000 CPU s", time.process_time() - c)
    t = [];
    for _ in range(50):
        c = time.process_time(); new.singular_values(B, A, s); t.append(time.process_time() - c)
    print("new 4x4 r2000 median CPU us", statistics.median(t) * 1e6)
