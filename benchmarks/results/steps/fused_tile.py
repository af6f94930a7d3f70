"""Experiment: what a fused CPU kernel buys over the ``"bmm"`` fast path (docs/benchmarks.md).

Run from the repository root: ``python benchmarks/results/steps/fused_tile.py [--threads 2]``
(writes ``benchmarks/results/steps/fused-tile-t{threads}.md``). Needs a C compiler with OpenMP
(``cc``) and a torch whose bundled BLAS exports ``sgemm_`` (the x86-64 Linux wheels do); says so
and stops otherwise. Not part of the library: the question it answers is whether the cells where
``bora_matmul`` misses 1.05x LoRA are lost to the unfused path itself (one BLAS call per step,
``(b, r, T)`` intermediates through memory) or to the block structure (``b`` narrow GEMMs).

``fused_tile.c`` runs the whole forward in one OpenMP region over tiles of tokens, each tile's
project, mix and lift in the thread's cache. For ``T = 2048`` float32 tokens, 896² and 4096²,
``r`` in {16, 64}, ``b`` in {4, 8, 16}, one round times LoRA ``(x @ A.T) @ B.T``,
``torch_ref.bora_matmul`` and the fused kernel at tiles of 64, 128 and 256 tokens, with the
benchmark harness's interleaving (``benchmarks._timing.interleave``: one warm-up call each, then 25
rounds whose order rotates) and its ratios (median over median, interquartile range of the
per-round ratios), ``torch.no_grad()``, wall clock, glibc malloc kept steady as in the harness.
Every cell first checks the fused output against the NumPy reference (float64) within 1e-5 of its
largest entry.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks._timing import Clock, interleave, machine_info, steady_malloc, summarize  # noqa: E402
from bora_ref import numpy_ref, torch_ref  # noqa: E402

T = 2048
SHAPES = (896, 4096)
RANKS = (16, 64)
BLOCKS = (4, 8, 16)
TILES = (64, 128, 256)
ROUNDS = 25
SOURCE = Path(__file__).with_name("fused_tile.c")


def _build(workdir: Path) -> tuple[ctypes.CDLL, str]:
    """Compile ``fused_tile.c`` against torch's own libraries; return the library and the compiler line."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise SystemExit("fused_tile.py: no C compiler (cc or gcc) on PATH")
    lib_dir = Path(torch.__file__).parent / "lib"
    out = workdir / "libfused_tile.so"
    cmd = [cc, "-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", str(SOURCE), "-o", str(out),
           f"-L{lib_dir}", "-ltorch_cpu", f"-Wl,-rpath,{lib_dir}"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"fused_tile.py: build failed (torch's BLAS may not export sgemm_):\n{done.stderr}")
    version = subprocess.run([cc, "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    lib = ctypes.CDLL(str(out))
    lib.bora_forward_tiled.restype = ctypes.c_int
    return lib, f"{version}; {' '.join(['cc', *cmd[1:6]])}"


def _fused(lib: ctypes.CDLL, x: torch.Tensor, B: torch.Tensor, A: torch.Tensor, sigma: torch.Tensor, tile: int) -> torch.Tensor:
    (N, n), (m, r), b = x.shape, B.shape, sigma.shape[0]
    y = torch.empty(N, m)
    ptr = ctypes.c_void_p
    status = lib.bora_forward_tiled(ptr(x.data_ptr()), ptr(A.data_ptr()), ptr(B.data_ptr()), ptr(sigma.data_ptr()),
                                    ptr(y.data_ptr()), N, n, m, r, b, tile)
    if status:
        raise RuntimeError(f"bora_forward_tiled returned {status}")
    return y


def _cell(lib: ctypes.CDLL, m: int, r: int, b: int) -> dict[str, float | str]:
    g = torch.Generator().manual_seed(0)
    x, A, B = torch.randn(T, m, generator=g), torch.randn(r, m, generator=g) / m**0.5, torch.randn(m, r, generator=g)
    sigma = torch.rand(b, b, r, generator=g) + 0.5
    ref = numpy_ref.bora_matmul(*(t.double().numpy() for t in (x, B, A, sigma)))
    err = np.abs(_fused(lib, x, B, A, sigma, TILES[0]).double().numpy() - ref).max() / np.abs(ref).max()
    if not err <= 1e-5:
        raise SystemExit(f"fused kernel disagrees with the NumPy reference at {m}² r={r} b={b}: {err:.2e}")
    forms = {"lora": lambda: (x @ A.T) @ B.T, "bmm": lambda: torch_ref.bora_matmul(x, B, A, sigma)}
    forms.update({f"fused {t}": (lambda t=t: _fused(lib, x, B, A, sigma, t)) for t in TILES})
    with torch.no_grad():
        times = interleave(forms, repeats=ROUNDS, clock=Clock("wall", torch.device("cpu")))
    row: dict[str, float | str] = {"LoRA ms": statistics.median(times["lora"]) * 1e3, "error": float(err)}
    for name in forms:
        if name != "lora":
            s = summarize(times, name, "lora")
            row[name] = f"{s.ratio:.3f} ({s.ratio_q25:.2f}-{s.ratio_q75:.2f})"
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    out = args.out or ROOT / f"benchmarks/results/steps/fused-tile-t{args.threads}.md"
    torch.set_num_threads(args.threads)
    allocator = steady_malloc()
    with tempfile.TemporaryDirectory() as workdir:
        lib, compiler = _build(Path(workdir))
        command = "python benchmarks/results/steps/fused_tile.py " + " ".join(sys.argv[1:] if argv is None else argv)
        header = {"command": command.strip(), **machine_info(torch.device("cpu"), Clock("wall", torch.device("cpu"))),
                  "allocator": allocator, "compiler": compiler, "dtype": "float32", "tokens T": str(T)}
        cols = ["bmm", *(f"fused {t}" for t in TILES)]
        lines = [f"# Fused token-tile kernel vs the bmm fast path ({args.threads} threads, forward, wall clock)", "",
                 *[f"- {k}: `{v}`" for k, v in header.items()], "",
                 f"Ratios: median candidate time / median LoRA time over {ROUNDS} rounds (interquartile range of the per-round ratios); `fused N`: tiles of N tokens.", "",
                 "| m x n | r | b | LoRA ms | " + " | ".join(f"{c} / LoRA" for c in cols) + " | fused vs reference |",
                 "| --- | ---: | ---: | ---: | " + " | ".join("---:" for _ in cols) + " | ---: |"]
        for m in SHAPES:
            for r in RANKS:
                for b in BLOCKS:
                    row = _cell(lib, m, r, b)
                    lines.append(f"| {m}x{m} | {r} | {b} | {row['LoRA ms']:.2f} | "
                                 + " | ".join(str(row[c]) for c in cols) + f" | {row['error']:.1e} |")
                    print(lines[-1], flush=True)
    lines += ["", f"Finished {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC, load average "
              + " ".join(f"{x:.1f}" for x in os.getloadavg()) + "."]
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
