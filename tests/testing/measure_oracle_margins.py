"""Measure the oracle's margins: worst error/tolerance of correct kernels, and which planted bugs it catches.

Run from the repository root (it imports the test kernels from ``tests/testing/kernels.py``)::

    OMP_NUM_THREADS=1 python tests/testing/measure_oracle_margins.py

It writes ``docs/guides/data/oracle_margins.json`` (the figures quoted in ``docs/guides/oracle.md``)
with the environment it ran in. (It lives here, not under ``docs/``, so the docs build does not
render it as a notebook.)
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bora_ref import torch_ref  # noqa: E402
from bora_ref.testing import DEFAULT_CASES, OracleFailure, check_golden, check_implementation  # noqa: E402
from tests.testing import kernels  # noqa: E402

FOUR = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
SEEDS = range(5)
OUT = ROOT / "docs" / "guides" / "data" / "oracle_margins.json"

CORRECT = {
    "torch_ref.bora_matmul (fast path)": torch_ref.bora_matmul,
    "one-hot masks": kernels.onehot_bora_matmul,
    "loop over blocks": kernels.loop_bora_matmul,
    "einsum dense ΔW": kernels.einsum_bora_matmul,
    "block-diagonal expansion": kernels.blockdiag_bora_matmul,
    "hand-written backward": kernels.custom_backward_bora_matmul,
}

# gap -> (kernel name, needs grad=True)
PLANTED = {
    "x with 3+ leading dims": [("keeps_first_leading_dim", False), ("squeezes_unit_dims", False)],
    "decode steps (1, n), (1, 1, n)": [("decode_sigma_transposed", False), ("decode_drops_batch_dims", False)],
    "long reductions in low precision": [("low_precision_accumulation", False)],
    "state between calls": [("caches_delta_by_shape", False), ("reuses_output_buffer", False),
                            ("global_saved_tensors", True), ("stale_block_index_cache", False)],
    "user code that exits / non-tensor / sparse": [("exits", False), ("returns_list", False),
                                                   ("returns_sparse", False)],
    "earlier gaps (logic, layout, dtype, backward)": [
        ("sigma_transposed", False), ("sigma_ignored", False), ("remainder_last", False),
        ("proportional_blocks", False), ("float32_roundtrip", False), ("flattens_leading_dims", False),
        ("writes_into_input", False), ("ignores_strides", False), ("bfloat16_via_float16", False),
        ("rejects_uneven", False), ("always_float32", False), ("detached", True), ("wrong_sigma_grad", True)],
}


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def margins() -> dict:
    out = {}
    for label, fn in CORRECT.items():
        worst: dict[str, dict] = {}
        for seed in SEEDS:
            report = check_implementation(fn, dtypes=FOUR, grad=True, seed=seed)
            for c in report.comparisons:
                d = _name(c.dtype)
                if c.ratio >= worst.get(d, {"ratio": -1.0})["ratio"]:
                    worst[d] = {"ratio": c.ratio, "case": c.case.name, "quantity": c.quantity, "seed": seed,
                                "call": c.call}
        golden = check_golden(fn).worst_ratio
        out[label] = {"oracle_worst_error_over_tolerance": worst,
                      "golden_worst_error_over_tolerance": {_name(d): v for d, v in golden.items()}}
        print(label, {d: round(v["ratio"], 3) for d, v in worst.items()}, flush=True)
    return out


def planted() -> dict:
    out = {}
    for gap, bugs in PLANTED.items():
        rows = []
        for name, grad in bugs:
            fn = getattr(kernels, name)
            if hasattr(fn, "reset"):
                fn.reset()
            try:
                check_implementation(fn, grad=grad, timeout=60.0)
                rows.append({"kernel": name, "grad": grad, "caught": False})
            except OracleFailure as exc:
                rows.append({"kernel": name, "grad": grad, "caught": True, "case": exc.case.name,
                             "dtype": _name(exc.dtype), "problem": str(exc).splitlines()[1].strip()[:200]})
        out[gap] = {"caught": sum(r["caught"] for r in rows), "tried": len(rows), "bugs": rows}
        print(gap, out[gap]["caught"], "/", out[gap]["tried"], flush=True)
    # how far the low-precision accumulation misses on the positive long case, per dtype
    worst = {}
    for dtype in (torch.bfloat16, torch.float16):
        try:
            check_implementation(kernels.low_precision_accumulation, cases=["long-n-positive"], dtypes=[dtype])
        except OracleFailure as exc:
            worst[_name(dtype)] = max(c.ratio for c in exc.report.comparisons)
    out["low_precision_accumulation_error_over_tolerance_on_long-n-positive"] = worst
    return out


def timings() -> dict:
    out = {}
    for grad in (False, True):
        best = []
        for _ in range(3):
            start = time.perf_counter()
            check_implementation(torch_ref.bora_matmul, grad=grad)
            best.append(time.perf_counter() - start)
        out[f"default run, torch_ref, grad={grad}: seconds (min of 3)"] = min(best)
    return out


def environment() -> dict:
    def version(pkg: str) -> str:
        try:
            return importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "python": platform.python_version(), "numpy": np.__version__, "torch": torch.__version__,
        "transformers": version("transformers"), "bora_ref": version("bora-ref"), "cpu": cpu,
        "logical_cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": "OMP_NUM_THREADS=1 python tests/testing/measure_oracle_margins.py",
        "note": "timings on a shared, loaded machine; margins and catches are deterministic for these seeds",
    }


def main() -> None:
    result = {
        "what": "worst error/tolerance of correct kernels per dtype (default cases, grad=True, four dtypes, "
                f"seeds {list(SEEDS)}, both calls per case), planted bugs caught by the default call "
                "(grad=True only where marked), and the default run's time",
        "cases": len(DEFAULT_CASES),
        "correct_kernels": margins(),
        "planted_bugs": planted(),
        "timings": timings(),
        "environment": environment(),
    }
    OUT.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
