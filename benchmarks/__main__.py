"""Benchmarks of the BoRA fast path against LoRA and PEFT: ``python -m benchmarks [--quick]``.

Sections (all by default; choose with ``--sections``):

- ``adapter``: ``torch_ref.bora_matmul`` vs plain LoRA ``(x A^T) B^T`` (and the ``delta_weight`` route);
- ``layer``: ``BoRALinear`` vs PEFT's ``lora.Linear``, frozen base matmul included;
- ``uneven``: the adapter path with ``b`` not dividing ``m``/``n``, next to an even ``b``;
- ``memory``: peak extra memory of each candidate (the fast path's does not grow with ``m n``);
- ``train``: one AdamW step of all-MiniLM-L6-v2 with LoRA vs BoRA adapters.

Every timing runs the candidates interleaved in this one process and reports medians and the
ratio to the LoRA baseline. Defaults: float32 and T = 2048 tokens on CPU; bfloat16, T = 8192 and
a ``torch.compile`` column on CUDA. Results go to ``--out`` as Markdown and CSV. On a shared CPU,
``--threads 1`` times the CPU seconds of one thread, which other jobs barely disturb.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from bora_ref import torch_ref

from ._report import Column, markdown_table, write_csv
from ._timing import Clock, machine_info, steady_malloc
from .adapter import memory_adapter, plain_bmm, time_adapter
from .layer import time_layer
from .train_step import time_train_step

SHAPES = ((4096, 4096), (11008, 4096), (896, 896))  # LLaMA-2-7B attention, its MLP up/gate; Qwen2.5-0.5B
RS, BS = (8, 16, 64), (2, 4, 8, 16)
SECTIONS = ("adapter", "layer", "uneven", "memory", "train")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

Cell = tuple[int, int, int, int, bool]  # m, n, r, b, with_ref


def plan(quick: bool, cuda: bool) -> dict[str, list[Cell]]:
    """The cells of every section. ``--quick`` keeps a subset that runs in minutes on two CPU cores."""
    shapes = SHAPES if not quick else ((4096, 4096), (896, 896))
    grid = [(m, n, r, b) for m, n in shapes for r in RS for b in BS]
    if quick:
        grid = [(m, n, r, b) for m, n, r, b in grid if r == 16 or b == 8]
    ref_everywhere = cuda or not quick  # the dense route costs seconds per call on a CPU
    adapter = [(m, n, r, b, ref_everywhere or m == 896 or (r, b) == (16, 8)) for m, n, r, b in grid]
    layer_grid = [(m, n, r, b) for m, n, r, b in grid if r == 16 or b == 8]
    if quick:
        layer_grid = [(m, n, r, b) for m, n, r, b in layer_grid if r == 16 and (m == 896 or b == 8)]
    layer = [(m, n, r, b, ref_everywhere or m == 896) for m, n, r, b in layer_grid]
    # b not dividing m, n next to an even b (896 = 7 * 128 is even at b = 7).
    uneven_bs = {4096: (7, 8), 896: (5, 6, 8)} if quick else {4096: (6, 7, 8), 11008: (6, 7, 8), 896: (5, 6, 7, 8)}
    uneven = [(m, n, 16, b, False) for m, n in shapes for b in uneven_bs[m]]
    memory = [(m, n, r, b, True) for m, n in shapes for r, b in ((16, 2), (16, 8), (16, 16), (64, 8))]
    return {"adapter": adapter, "layer": layer, "uneven": uneven, "memory": memory}


ADAPTER_COLUMNS: list[Column] = [
    ("shape", "shape", ""), ("r", "r", "d"), ("b", "b", "d"), ("pass", "pass", ""),
    ("LoRA ms", "lora_ms", ".2f"), ("BoRA ms", "bora_ms", ".2f"), ("BoRA / LoRA", "bora_ratio", ".3f"),
    ("paired IQR", "bora_ratio_iqr", ""), ("limit", "limit", ".3f"), ("ΔW route ms", "ref_ms", ".1f"),
    ("ΔW route / LoRA", "ref_ratio", ".1f"), ("compiled ms", "compiled_ms", ".2f"), ("compiled / LoRA", "compiled_ratio", ".3f"),
    ("compiled bmm / LoRA", "compiled_bmm_ratio", ".3f"),
]
STRATEGY_COLUMNS: list[Column] = [
    ("shape", "shape", ""), ("r", "r", "d"), ("b", "b", "d"), ("pass", "pass", ""), ("LoRA ms", "lora_ms", ".2f"),
    ("auto", "strategy", ""), ("auto / LoRA", "bora_ratio", ".3f"), ("paired IQR", "bora_ratio_iqr", ""),
    ("bmm / LoRA", "bmm_ratio", ".3f"), ("bmm IQR", "bmm_ratio_iqr", ""),
    ("dense / LoRA", "dense_ratio", ".3f"), ("dense IQR", "dense_ratio_iqr", ""),
]
LAYER_COLUMNS: list[Column] = [
    ("shape", "shape", ""), ("r", "r", "d"), ("b", "b", "d"), ("pass", "pass", ""),
    ("LoRA layer ms", "lora_ms", ".1f"), ("BoRALinear ms", "bora_ms", ".1f"), ("BoRA / LoRA", "bora_ratio", ".3f"),
    ("paired IQR", "bora_ratio_iqr", ""), ("ΔW route ms", "ref_ms", ".1f"), ("ΔW route / LoRA", "ref_ratio", ".2f"),
    ("compiled ms", "compiled_ms", ".1f"), ("compiled / LoRA", "compiled_ratio", ".3f"),
]
UNEVEN_COLUMNS: list[Column] = [
    ("shape", "shape", ""), ("r", "r", "d"), ("b", "b", "d"), ("even", "even", ""), ("pass", "pass", ""),
    ("LoRA ms", "lora_ms", ".2f"), ("BoRA ms", "bora_ms", ".2f"), ("BoRA / LoRA", "bora_ratio", ".3f"),
    ("paired IQR", "bora_ratio_iqr", ""),
]
MEMORY_COLUMNS: list[Column] = [
    ("shape", "shape", ""), ("r", "r", "d"), ("b", "b", "d"), ("pass", "pass", ""),
    ("LoRA MiB", "lora_MiB", ".1f"), ("BoRA MiB", "bora_MiB", ".1f"), ("BoRA − LoRA MiB", "bora_minus_lora_MiB", ".2f"),
    ("b·r·T term MiB", "brT_term_MiB", ".2f"), ("ΔW route MiB", "ref_MiB", ".1f"), ("m·n MiB", "mn_MiB", ".1f"),
]
TRAIN_COLUMNS: list[Column] = [
    ("adapter", "model", ""), ("r", "r", "d"), ("batch × seq", "batch_seq", ""), ("trainable", "trainable", ","),
    ("step ms (median)", "step_ms", ".0f"), ("min–max ms", "spread", ""), ("/ LoRA", "ratio", ".3f"),
    ("saved activations MiB", "activation_MiB", ".1f"), ("peak MiB", "peak_MiB", ".1f"),
]


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a subset: 4096² and 896², r=16 (and r=8, 64 at b=8); minutes on 2 cores")
    p.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu or cuda")
    p.add_argument("--dtype", choices=sorted(DTYPES), help="default: float32 on CPU, bfloat16 on CUDA")
    p.add_argument("--tokens", type=int, help="T, rows of x (default 2048 on CPU, 8192 on CUDA)")
    p.add_argument("--repeats", type=int, help="interleaved rounds per adapter cell (default 15 quick, 30 full; layer cells a third, >= 9)")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--clock", choices=("wall", "cpu"), help="cpu: process CPU time; default cpu with --threads 1 on CPU, else wall")
    p.add_argument("--strategies", action="store_true",
                   help="adapter section: also time each strategy of bora_matmul forced (bmm, dense) next to auto")
    p.add_argument("--shapes", nargs="+", metavar="MxN", help="restrict the shapes (e.g. 896x896 4096x4096)")
    p.add_argument("--ranks", nargs="+", type=int, help="restrict r")
    p.add_argument("--blocks", nargs="+", type=int, help="restrict b (adapter and layer sections)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None, help="torch.compile column (default: on CUDA only)")
    p.add_argument("--steady-malloc", action=argparse.BooleanOptionalAction, default=True,
                   help="CPU: keep freed memory in glibc's heap so page faults do not depend on the interleaving")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="directory for the .md and .csv files")
    return p.parse_args(argv)


def _progress(section: str, row: dict[str, Any]) -> None:
    keys = ("shape", "model", "r", "b", "pass", "strategy", "bora_ratio", "bmm_ratio", "dense_ratio", "ratio", "bora_minus_lora_MiB")
    parts = [f"{k}={row[k]:.3f}" if isinstance(row.get(k), float) else f"{k}={row[k]}" for k in keys if k in row]
    print(f"[{section}] " + " ".join(parts), flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else ("cpu" if args.device == "auto" else args.device))
    cuda = device.type == "cuda"
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = DTYPES[args.dtype or ("bfloat16" if cuda else "float32")]
    tokens = args.tokens or (8192 if cuda else 2048)
    repeats = args.repeats or (15 if args.quick else 30)
    use_compile = cuda if args.compile is None else args.compile
    compiled: Callable[..., torch.Tensor] | None = torch.compile(torch_ref.bora_matmul, dynamic=False) if use_compile else None
    compiled_bmm: Callable[..., torch.Tensor] | None = torch.compile(plain_bmm, dynamic=False) if use_compile else None
    if args.clock == "cpu" and cuda:
        raise SystemExit("--clock cpu measures host CPU time, not GPU time; use --clock wall on CUDA")
    clock = Clock(args.clock or ("cpu" if not cuda and torch.get_num_threads() == 1 else "wall"), device)
    allocator = steady_malloc() if args.steady_malloc and not cuda else "default"
    cells = plan(args.quick, cuda)
    for name in ("adapter", "layer"):  # optional restrictions of the grid
        cells[name] = [c for c in cells[name] if (not args.shapes or f"{c[0]}x{c[1]}" in args.shapes)
                       and (not args.ranks or c[2] in args.ranks) and (not args.blocks or c[3] in args.blocks)]

    # One file set per device, mode and choice of sections, so partial runs do not overwrite each other.
    stem = f"{device.type}-{'quick' if args.quick else 'full'}"
    if set(args.sections) != set(SECTIONS):
        stem += "-" + "-".join(name for name in SECTIONS if name in args.sections)
    if args.strategies:
        stem += "-strategies"
    for flag, values in (("s", args.shapes), ("r", args.ranks), ("b", args.blocks)):  # restricted grids
        if values:
            stem += f"-{flag}" + "_".join(map(str, values))
    stem += f"-t{torch.get_num_threads()}"
    args.out.mkdir(parents=True, exist_ok=True)
    header = {"command": "python -m benchmarks " + " ".join(sys.argv[1:] if argv is None else argv), **machine_info(device, clock),
              "allocator": allocator, "dtype": str(dtype).removeprefix("torch."), "tokens T": str(tokens)}
    parts = [f"# BoRA benchmarks ({stem})", "", *[f"- {k}: `{v}`" for k, v in header.items()]]
    started = time.perf_counter()
    common = {"tokens": tokens, "dtype": dtype}

    def section(name: str, title: str, columns: list[Column], rows_of: Callable[[], list[dict[str, Any]]]) -> None:
        if name not in args.sections:
            return
        rows = rows_of()
        write_csv(args.out / f"{stem}-{name}.csv", rows, header)
        parts.extend(["", f"## {title}", "", markdown_table(rows, columns)])
        (args.out / f"{stem}.md").write_text("\n".join(parts) + "\n", encoding="utf-8")

    def collect(name: str, make: Callable[[Cell], list[dict[str, Any]]]) -> Callable[[], list[dict[str, Any]]]:
        def run() -> list[dict[str, Any]]:
            rows = []
            for cell in cells[name]:
                for row in make(cell):
                    _progress(name, row)
                    rows.append(row)
            return rows
        return run

    section("adapter", "Adapter path: bora_matmul vs (x Aᵀ) Bᵀ", STRATEGY_COLUMNS if args.strategies else ADAPTER_COLUMNS,
            collect("adapter", lambda c: time_adapter(*c[:4], **common, clock=clock, repeats=repeats,
                                                      with_ref=c[4] and not args.strategies, compiled=compiled,
                                                      strategies=args.strategies, compiled_bmm=compiled_bmm)))
    section("layer", "Whole layer: BoRALinear vs the LoRA layer", LAYER_COLUMNS, collect("layer", lambda c: time_layer(
        *c[:4], **common, clock=clock, repeats=max(9, repeats // 3), with_ref=c[4], compile_layers=use_compile)))
    section("uneven", "Uneven splits (b does not divide m, n)", UNEVEN_COLUMNS, collect("uneven", lambda c: time_adapter(
        *c[:4], **common, clock=clock, repeats=repeats, with_ref=False)))
    section("memory", "Peak extra memory", MEMORY_COLUMNS, collect("memory", lambda c: memory_adapter(
        *c[:4], **common, device=device, with_ref=c[4])))

    def train() -> list[dict[str, Any]]:
        batch, seq = (8, 64) if args.quick else (16, 128)
        rows = time_train_step(r=8, bs=(4,) if args.quick else (2, 4, 8), batch=batch, seq_len=seq,
                               repeats=5 if args.quick else 9, device=device)
        for row in rows:
            row["batch_seq"] = f"{batch} × {seq}"
            row["spread"] = f"{row['min_ms']:.0f}–{row['max_ms']:.0f}"
            _progress("train", row)
        return rows

    section("train", "Training step: all-MiniLM-L6-v2, attention projections adapted", TRAIN_COLUMNS, train)
    finished = f"{time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC, load average {' '.join(f'{v:.1f}' for v in os.getloadavg())}"
    (args.out / f"{stem}.md").write_text("\n".join([*parts, "", f"Finished {finished}."]) + "\n", encoding="utf-8")
    print(f"done in {time.perf_counter() - started:.0f} s ({finished}); results in {args.out / (stem + '.md')}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
