"""Side-by-side timing: interleaved runs in one process, medians, paired ratios, machine facts.

Every round runs each candidate once, starting at a rotating position, so slow drifts of the
machine's load hit all candidates alike. A ratio is reported two ways: the ratio of the medians
(the headline number) and the interquartile range of the per-round ratios (how noisy it was).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.metadata
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["Clock", "Summary", "interleave", "summarize", "timing_columns", "steady_malloc", "machine_info"]


@dataclass(frozen=True)
class Clock:
    """``"wall"``: elapsed seconds (``perf_counter``, after a device sync on CUDA). ``"cpu"``: CPU
    seconds this process used (``process_time``): on a shared CPU with one torch thread it
    ignores the time other jobs hold the core, so it is far less noisy than wall time."""

    kind: str
    device: torch.device

    def now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter() if self.kind == "wall" else time.process_time()


def interleave(
    fns: Mapping[str, Callable[[], Any]],
    *,
    repeats: int,
    clock: Clock,
    max_runs: Mapping[str, int] | None = None,
) -> dict[str, list[float]]:
    """Seconds per call of every function in ``fns``, ``repeats`` interleaved rounds after one warm-up.

    ``max_runs`` caps slow candidates (e.g. the dense reference route): they take part in the first
    rounds only.
    """
    names = list(fns)
    caps = {name: (max_runs or {}).get(name, repeats) for name in names}
    for fn in fns.values():  # warm-up: first-call allocations, compilation
        fn()
    times: dict[str, list[float]] = {name: [] for name in names}
    for k in range(repeats):
        for name in names[k % len(names):] + names[: k % len(names)]:
            if len(times[name]) < caps[name]:
                start = clock.now()
                fns[name]()
                times[name].append(clock.now() - start)
    return times


@dataclass(frozen=True)
class Summary:
    """Median seconds of a candidate and its ratio to the baseline (``nan`` where not measured)."""

    median: float
    ratio: float
    ratio_q25: float
    ratio_q75: float


def summarize(times: Mapping[str, list[float]], name: str, baseline: str) -> Summary:
    """Median of ``times[name]``, the ratio of medians to ``baseline`` and the IQR of the paired ratios."""
    t, base = times.get(name, []), times[baseline]
    if not t:
        nan = float("nan")
        return Summary(nan, nan, nan, nan)
    paired = [a / b for a, b in zip(t, base)]  # round k of both
    if len(paired) >= 2:
        q25, _, q75 = statistics.quantiles(paired, n=4, method="inclusive")
    else:
        q25 = q75 = paired[0]
    median = statistics.median(t)
    return Summary(median, median / statistics.median(base), q25, q75)


def timing_columns(times: Mapping[str, list[float]], baseline: str = "lora") -> dict[str, float | str]:
    """Table columns for every candidate: ``<name>_ms`` and, except the baseline, ``<name>_ratio`` and its IQR."""
    cols: dict[str, float | str] = {}
    for name in times:
        s = summarize(times, name, baseline)
        cols[f"{name}_ms"] = s.median * 1e3
        if name != baseline:
            cols[f"{name}_ratio"] = s.ratio
            cols[f"{name}_ratio_iqr"] = f"{s.ratio_q25:.3f}-{s.ratio_q75:.3f}"
    return cols


def steady_malloc() -> str:
    """Make glibc's malloc keep and reuse freed memory, as torch's caching allocator does on GPUs.

    By default glibc serves blocks of 32 MiB and more (``y`` at 4096 x 2048 float32) from fresh
    ``mmap`` pages, one page fault per 4 KiB, and trims or keeps smaller freed blocks depending on
    the recent sequence of frees, so whether a candidate's outputs land on warm memory changes
    from round to round with the *other* candidate's allocations. No mmap and no trimming make
    every candidate reuse warm memory after its warm-up. Returns what was set.
    """
    name = ctypes.util.find_library("c")
    mallopt = getattr(ctypes.CDLL(name), "mallopt", None) if name else None
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc's <malloc.h>
    if mallopt is None or not (mallopt(M_TRIM_THRESHOLD, 2**30) and mallopt(M_MMAP_MAX, 0)):
        return "default (glibc mallopt unavailable)"
    return "glibc heap only, no trimming: mallopt(M_MMAP_MAX=0, M_TRIM_THRESHOLD=1 GiB)"


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, timeout=10)
        return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine_info(device: torch.device, clock: Clock) -> dict[str, str]:
    """The facts a reader needs to compare a table with their own: machine, versions, settings."""
    info = {
        "cpu": f"{_cpu_model()} ({os.cpu_count()} logical cores)",
        "torch threads": str(torch.get_num_threads()),
        "date (UTC)": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "load average at start": " ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "clock": clock.kind,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": _version("numpy"),
        "peft": _version("peft"),
        "transformers": _version("transformers"),
        "bora_ref commit": _git_commit(),
    }
    if device.type == "cuda":
        info["cuda"] = str(torch.version.cuda)
    return info
