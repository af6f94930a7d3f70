"""One step of the fast path at a time, against LoRA's corresponding product: ``python -m benchmarks.steps``.

Supports the analysis in docs/benchmarks.md ("Where the 1.05x target is missed"). One torch
thread, CPU-time clock, interleaved rounds, medians; every ratio is to the first row of its
group (LoRA's product). Groups, for ``T = 2048`` float32 tokens:

- ``lift``: LoRA's ``z @ B.T`` (written, and added into ``y``) against BoRA's strided lift into
  ``y``'s column strips, written (BLAS ``beta = 0``) and added (``beta = 1``, what the
  ``"bmm"`` strategy runs, after a zero fill or into the layer's base output), the zero fill
  alone, the lift after copying ``u`` into a row-major ``(b, T, r)`` layout, and the lift
  computed as ``y^T`` (contiguous row blocks of ``y^T``, i.e. a column-major ``y``);
- ``project``: LoRA's ``x @ A.T`` against BoRA's block projection into the strided ``(r, b, T)``
  layout and into a contiguous ``(b, r, T)`` tensor, and the mixing ``bmm`` on its own;
- ``add``: the layer's residual add ``base + update * s`` with a row-major and a column-major
  ``update``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ._timing import Clock, machine_info, steady_malloc

T = 2048
CASES = ((4096, 16, 8), (4096, 64, 8), (896, 16, 2), (896, 16, 8), (896, 64, 4), (896, 64, 16))


def _bench(fns: dict[str, Callable[[], Any]], rounds: int) -> list[tuple[str, float, float]]:
    for fn in fns.values():
        fn()
    names, times = list(fns), {name: [] for name in fns}
    for k in range(rounds):
        for name in names[k % len(names):] + names[: k % len(names)]:
            start = time.process_time()
            fns[name]()
            times[name].append(time.process_time() - start)
    base = statistics.median(times[names[0]])
    return [(name, statistics.median(t) * 1e3, statistics.median(t) / base) for name, t in times.items()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.steps", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=31)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/steps"))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    allocator = steady_malloc()
    header = {"command": "python -m benchmarks.steps " + " ".join(sys.argv[1:] if argv is None else argv),
              **machine_info(torch.device("cpu"), Clock("cpu", torch.device("cpu"))), "allocator": allocator}
    lines = ["# Fast-path steps against LoRA's products (one thread, CPU time)", "", *[f"- {k}: `{v}`" for k, v in header.items()], "",
             "| group | m = n | r | b | candidate | ms | / first row |", "| --- | ---: | ---: | ---: | --- | ---: | ---: |"]
    g = torch.Generator().manual_seed(0)
    for m, r, b in CASES:
        n, mb = m, m // b
        x, A, B = torch.randn(T, n, generator=g), torch.randn(r, n, generator=g), torch.randn(m, r, generator=g)
        sigma_k = torch.randn(r, b, b, generator=g)
        z, y, yT = torch.randn(T, r, generator=g), torch.empty(T, m), torch.empty(m, T)
        ut, ub, zt, zb = torch.randn(r, b, T, generator=g), torch.empty(b, T, r), torch.empty(r, b, T), torch.empty(b, r, T)
        Bb, Ab = B.view(b, mb, r), A.view(r, b, n // b).transpose(0, 1)
        xb, yb = x.view(T, b, n // b).transpose(0, 1), y.view(T, b, mb).transpose(0, 1)

        def copy_then_lift() -> None:
            ub.copy_(ut.permute(1, 2, 0))
            torch.bmm(ub, Bb.transpose(1, 2), out=yb)

        groups = {
            "lift": {
                "LoRA z @ B.T": lambda: torch.mm(z, B.T, out=y),
                "LoRA z @ B.T added into y (addmm_, BLAS beta = 1)": lambda: y.addmm_(z, B.T),
                "BoRA lift into column strips (bmm, beta = 0)": lambda: torch.bmm(ut.permute(1, 2, 0), Bb.transpose(1, 2), out=yb),
                "BoRA lift added into column strips (baddbmm_, beta = 1)": lambda: yb.baddbmm_(ut.permute(1, 2, 0), Bb.transpose(1, 2)),
                "zero fill of y alone": lambda: y.zero_(),
                "copy u to (b, T, r), then lift": copy_then_lift,
                "lift as y^T (column-major y)": lambda: torch.bmm(Bb, ut.transpose(0, 1), out=yT.view(b, mb, T)),
            },
            "project": {
                "LoRA x @ A.T": lambda: torch.mm(x, A.T, out=z),
                "BoRA project into strided (r, b, T)": lambda: torch.bmm(Ab, xb.transpose(1, 2), out=zt.transpose(0, 1)),
                "BoRA project into contiguous (b, r, T)": lambda: torch.bmm(Ab, xb.transpose(1, 2), out=zb),
                "BoRA mixing bmm alone": lambda: torch.bmm(sigma_k, zb.transpose(0, 1), out=ut),
            },
        }
        if r == 16 and b in (2, 8):
            base, row_major, col_major = torch.randn(T, m, generator=g), torch.randn(T, m, generator=g), torch.randn(m, T, generator=g).T
            groups["add"] = {"base + update * s, row-major update": lambda: base + row_major * 2.0,
                             "base + update * s, column-major update": lambda: base + col_major * 2.0}
        for group, fns in groups.items():
            for name, ms, ratio in _bench(fns, args.rounds):
                lines.append(f"| {group} | {m} | {r} | {b} | {name} | {ms:.3f} | {ratio:.3f} |")
                print(lines[-1], flush=True)
    lines += ["", f"Finished {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC."]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "steps-t1.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
