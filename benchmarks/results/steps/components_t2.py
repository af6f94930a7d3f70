"""The forward's steps one at a time at torch's default 2 threads, wall clock (docs/benchmarks.md, point 5).

Run from the repository root: ``python benchmarks/results/steps/components_t2.py`` (writes
``benchmarks/results/steps/components-t2.md``; ``--threads 1`` and ``--out`` for other runs).

For ``T = 2048`` float32 tokens, 4096² and 896², ``r = 16``, ``b = 8``: LoRA's two products,
each forward step of the ``"bmm"`` strategy as `bora_ref.torch_ref` runs it (projection into a
contiguous ``(b, r, T)`` tensor, mixing, zero fill, lift added into the column strips), a few
alternative layouts of the projection and the lift, and both whole calls under
``torch.no_grad()`` (LoRA's ``(x @ A.T) @ B.T`` and ``bora_matmul``). Each candidate runs on its
own: 3 warm-up calls, then the median of 21 calls (wall clock, ``perf_counter``), with glibc's
malloc kept steady as in the benchmark harness. Not interleaved: read it as a breakdown, the
ratios themselves come from the adapter grid.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks._timing import Clock, machine_info, steady_malloc  # noqa: E402
from bora_ref import torch_ref  # noqa: E402
from bora_ref.torch_ref import _add_col_blocks, _blocks, _runs  # noqa: E402

T = 2048
CASES = ((4096, 4096, 16, 8), (896, 896, 16, 8))


def _median_ms(fn: Callable[[], Any], calls: int = 21, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def _candidates(m: int, n: int, r: int, b: int) -> dict[str, Callable[[], Any]]:
    g = torch.Generator().manual_seed(0)
    x, A, B, s = (torch.randn(T, n, generator=g), torch.randn(r, n, generator=g),
                  torch.randn(m, r, generator=g), torch.randn(b, b, r, generator=g))
    z, y = x @ A.T, torch.empty(T, m)
    run = _runs(n, b)[0]
    zb, zbt = torch.empty(b, r, T), torch.empty(b, T, r)
    zt, sk, ut = zb.transpose(0, 1), s.permute(2, 0, 1).contiguous(), torch.empty(r, b, T)
    u = ut.permute(1, 2, 0)  # (b, T, r) strided view, what the lift reads
    uc = u.contiguous()
    nb, mb = n // b, m // b

    def lora_call() -> torch.Tensor:
        with torch.no_grad():
            return (x @ A.T) @ B.T

    def bora_call() -> torch.Tensor:
        with torch.no_grad():
            return torch_ref.bora_matmul(x, B, A, s)

    return {
        "LoRA projection x @ A.T": lambda: x @ A.T,
        "LoRA lift z @ B.T": lambda: z @ B.T,
        "BoRA projection, one bmm into contiguous (b, r, T) [fast path]": lambda: torch.bmm(
            _blocks(A, run, 1), _blocks(x, run, 1, transpose=True), out=zb),
        "BoRA projection into (b, T, r)": lambda: torch.bmm(_blocks(x, run, 1), _blocks(A, run, 1, transpose=True), out=zbt),
        "BoRA projection, one mm per block": lambda: [
            torch.mm(A[:, i * nb:(i + 1) * nb], x[:, i * nb:(i + 1) * nb].T, out=zb[i]) for i in range(b)],
        "BoRA mixing bmm [fast path]": lambda: torch.bmm(sk, zt, out=ut),
        "zero fill of y (T, m) [fast path]": lambda: x.new_zeros(T, m),
        "BoRA lift added into column strips, u strided [fast path]": lambda: _add_col_blocks(y, u, B, _runs(m, b)),
        "BoRA lift added into column strips, u contiguous": lambda: _add_col_blocks(y, uc, B, _runs(m, b)),
        "BoRA lift added, one addmm_ per block": lambda: [
            y[:, i * mb:(i + 1) * mb].addmm_(uc[i], B[i * mb:(i + 1) * mb].T) for i in range(b)],
        "whole call: LoRA (x @ A.T) @ B.T, no_grad": lora_call,
        "whole call: bora_matmul, no_grad": bora_call,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/steps/components-t2.md")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    allocator = steady_malloc()
    command = "python benchmarks/results/steps/components_t2.py " + " ".join(sys.argv[1:] if argv is None else argv)
    header = {"command": command.strip(), **machine_info(torch.device("cpu"), Clock("wall", torch.device("cpu"))),
              "allocator": allocator, "dtype": "float32", "tokens T": str(T)}
    lines = [f"# Forward steps one at a time ({args.threads} threads, wall clock)", "",
             *[f"- {k}: `{v}`" for k, v in header.items()], "",
             "| m x n | r | b | step | ms (median of 21) |", "| --- | ---: | ---: | --- | ---: |"]
    for m, n, r, b in CASES:
        for name, fn in _candidates(m, n, r, b).items():
            lines.append(f"| {m}x{n} | {r} | {b} | {name} | {_median_ms(fn):.2f} |")
            print(lines[-1], flush=True)
    lines += ["", f"Finished {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC."]
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
