"""Figures of the rank analysis (matplotlib); every function returns a new ``Figure``.

No ``pyplot``: figures are built with ``matplotlib.figure.Figure`` on their own Agg canvas, so
nothing touches matplotlib's global state (current figure, backend selection) and the functions
work headless, in threads and in notebooks alike (``fig.savefig(path)`` to write a PNG; a
notebook displays a returned ``Figure`` directly).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .. import numpy_ref
from .._arrays import as_float64
from .._validation import BoRAValueError, check_int
from ..analysis.params import best_b, param_count
from ..partition import block_sizes
from ..analysis.rank import rank_bound
from .sweep import AblationRow, LayerShape, SweepRow

__all__ = ["plot_ablation", "plot_block_heatmap", "plot_overhead_vs_b", "plot_rank_vs_b", "plot_spectra"]


def _figure(ncols: int = 1, nrows: int = 1, *, width: float = 4.8, height: float = 3.6) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    FigureCanvasAgg(fig)  # attach an Agg canvas: savefig/PNG rendering without pyplot
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes.ravel()


def _label(model: str, module: str, m: int, n: int) -> str:
    return f"{model} {module} ({m}×{n})".strip()


def _non_empty(name: str, items: Sequence[Any], kind: type) -> list[Any]:
    items = list(items)
    if not items or not all(isinstance(x, kind) for x in items):
        raise BoRAValueError(f"{name} must be a non-empty sequence of {kind.__name__}, got {items!r:.80}")
    return items


def plot_rank_vs_b(rows: Sequence[SweepRow], *, ncols: int = 3) -> Figure:
    """Rank against ``b``: BoRA measured and its bound, LoRA, and LoRA with BoRA's parameter budget.

    One panel per layer shape, one colour per ``r``; log-log axes. Markers on the dashed bound
    line mean the bound is attained.

    Args:
        rows: from :func:`bora_ref.report.sweep.rank_sweep` (any subset).
        ncols: panels per row.

    Raises:
        ValueError: ``rows`` empty or not ``SweepRow`` items.
    """
    rows = _non_empty("rows", rows, SweepRow)
    ncols = check_int("ncols", ncols, minimum=1)
    shapes = list(dict.fromkeys((x.model, x.module, x.m, x.n) for x in rows))
    fig, axes = _figure(min(ncols, len(shapes)), -(-len(shapes) // ncols))
    for ax, shape in zip(axes, shapes):
        mine = [x for x in rows if (x.model, x.module, x.m, x.n) == shape]
        for color, r in zip(("C0", "C1", "C2", "C3", "C4", "C5"), sorted({x.r for x in mine})):
            series = sorted((x for x in mine if x.r == r), key=lambda x: x.b)
            bs = [x.b for x in series]
            ax.plot(bs, [x.bound for x in series], "--", color=color, alpha=0.7)
            ax.plot(bs, [x.measured for x in series], "o", color=color, label=f"BoRA r={r}")
            ax.plot(bs, [x.lora_rank for x in series], ":", color=color)
            ax.plot(bs, [x.equal_budget_lora_rank for x in series], "-.", color=color, alpha=0.6)
        ax.set(xscale="log", yscale="log", xlabel="blocks b", ylabel="rank of ΔW", title=_label(*shape))
        ax.xaxis.set_major_formatter("{x:g}")
        ax.legend(fontsize="small", title="o measured, -- bound\n: LoRA, -. LoRA same budget", title_fontsize="x-small")
    for ax in axes[len(shapes):]:
        ax.set_visible(False)
    return fig


def plot_spectra(spectra: Mapping[str, Any], *, title: str = "singular values of ΔW", normalize: bool = True) -> Figure:
    """Singular-value spectra side by side (e.g. LoRA vs BoRA), log scale.

    Zeros cannot be drawn on a log axis and are left out. To hide rounding noise, pass only the
    values above a rank tolerance (e.g. ``info.singular_values[:info.rank]`` of a ``RankInfo``).

    Args:
        spectra: label -> ``(k,)`` singular values (NumPy or torch, non-negative).
        title: axes title.
        normalize: divide every spectrum by its largest value (compare shapes, not scales).

    Raises:
        ValueError: ``spectra`` empty, or a spectrum that is not a finite non-negative vector.
    """
    if not isinstance(spectra, Mapping) or not spectra:
        raise BoRAValueError(f"spectra must be a non-empty mapping label -> singular values, got {spectra!r:.80}")
    fig, (ax,) = _figure()
    for label, values in spectra.items():
        S, _ = as_float64(f"spectra[{label!r}]", values, ndim=1)
        if S.min() < 0:
            raise BoRAValueError(f"spectra[{label!r}] must be non-negative singular values, got a minimum of {S.min():g}")
        S = np.sort(S)[::-1]
        if normalize and S[0] > 0:
            S = S / S[0]
        k = np.flatnonzero(S > 0)
        ax.plot(k + 1, S[k], ".-", markersize=3, label=label)
    ax.set(yscale="log", xlabel="index k", ylabel="σ_k / σ_1" if normalize else "σ_k", title=title)
    ax.legend(fontsize="small")
    return fig


def plot_block_heatmap(B: Any, A: Any, sigma: Any, *, max_entries: int = 4_000_000) -> Figure:
    """Heatmap of ΔW (from :func:`bora_ref.numpy_ref.delta_weight`) with the block grid drawn.

    Args:
        B: ``(m, r)``. A: ``(r, n)``. sigma: ``(b, b, r)``; NumPy or torch, any float dtype.
        max_entries: refuse shapes with ``m n`` above this (ΔW is formed here).

    Raises:
        ValueError: invalid factors, or ``m n > max_entries``.
    """
    B64, _ = as_float64("B", B)
    A64, _ = as_float64("A", A)
    s64, _ = as_float64("sigma", sigma)
    if B64.ndim == 2 and A64.ndim == 2 and B64.shape[0] * A64.shape[1] > check_int("max_entries", max_entries, minimum=1):
        raise BoRAValueError(
            f"plot_block_heatmap forms ΔW: m * n = {B64.shape[0] * A64.shape[1]} exceeds max_entries={max_entries}"
        )
    delta = numpy_ref.delta_weight(B64, A64, s64)  # (m, n), validates the shapes
    m, n = delta.shape
    b = s64.shape[0]
    fig, (ax,) = _figure(width=5.6, height=5.6 * min(2.0, max(0.5, m / n)))
    limit = float(np.abs(delta).max()) or 1.0
    image = ax.imshow(delta, cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest", aspect="auto")
    for edge in np.cumsum(block_sizes(m, b))[:-1]:
        ax.axhline(edge - 0.5, color="k", linewidth=0.6)
    for edge in np.cumsum(block_sizes(n, b))[:-1]:
        ax.axvline(edge - 0.5, color="k", linewidth=0.6)
    ax.set(title=f"ΔW ({m}×{n}), b={b}, r={B64.shape[1]}: block (i, j) = B_i diag(σ_ij) A_j",
           xlabel="column n", ylabel="row m")
    fig.colorbar(image, ax=ax, shrink=0.8)
    return fig


def plot_overhead_vs_b(shapes: Sequence[LayerShape | tuple[int, int]], bs: Sequence[int], *, r: int = 8) -> Figure:
    """Parameter cost of BoRA against ``b``: Σ overhead over LoRA, and cost per unit of rank.

    Left: $100 \\, b^2 r / (r(m + n))$, the extra parameters over LoRA of the same ``r`` (it does
    not depend on ``r``). Right: parameters per unit of the rank bound relative to LoRA,
    $(r(m+n) + b^2 r) / (b r (m + n)) = 1/b + b/(m + n)$ for ``r <= m/b, n/b``, with
    :func:`bora_ref.analysis.params.best_b` marked.

    Args:
        shapes: :class:`bora_ref.report.sweep.LayerShape` items or ``(m, n)`` tuples.
        bs: block counts to draw (each ``1 <= b <= min(m, n)`` per shape).
        r: rank per block used for the counts.

    Raises:
        ValueError: empty inputs or a ``b`` that does not fit a shape.
    """
    if not shapes or not bs:
        raise BoRAValueError(f"shapes and bs must not be empty, got {len(shapes)} shapes and bs={list(bs)}")
    fig, (left, right) = _figure(2)
    for s in shapes:
        label, m, n = (_label(s.model, s.module, s.m, s.n), s.m, s.n) if isinstance(s, LayerShape) else (f"{s[0]}×{s[1]}", *s)
        counts = [param_count(m, n, r, b) for b in bs]
        line = left.plot(bs, [c.overhead_pct for c in counts], "o-", markersize=3, label=label)[0]
        per_rank = [c.total / (rank_bound(m, n, r, b) * (m + n)) for b, c in zip(bs, counts)]
        right.plot(bs, per_rank, "o-", markersize=3, color=line.get_color())
        best = best_b(m, n)
        right.axvline(best, color=line.get_color(), linestyle=":", linewidth=0.8)
    left.set(xscale="log", yscale="log", xlabel="blocks b", ylabel="Σ parameters / LoRA parameters (%)",
             title="BoRA overhead over LoRA (same r)")
    right.set(xscale="log", yscale="log", xlabel="blocks b", ylabel="parameters per rank, relative to LoRA",
              title=f"cost per unit of rank (r={r}); dotted: best b")
    for ax in (left, right):
        ax.xaxis.set_major_formatter("{x:g}")
    left.legend(fontsize="x-small", loc="upper left")
    return fig


def plot_ablation(rows: Sequence[AblationRow], *, r: int | None = None) -> Figure:
    """Rank of ΔW against the number ``k`` of blocks with their own Σ_ij (partial-Σ ablation).

    Args:
        rows: from :func:`bora_ref.report.sweep.partial_sigma_ablation`.
        r: draw LoRA's rank ``r`` as a reference line when given.

    Raises:
        ValueError: ``rows`` empty or not ``AblationRow`` items.
    """
    rows = _non_empty("rows", rows, AblationRow)
    fig, (ax,) = _figure()
    ax.step([x.k for x in rows], [x.rank for x in rows], where="post", marker="o", markersize=3, label="measured")
    ax.axhline(rows[0].bound, color="k", linestyle="--", linewidth=0.8, label=f"bound {rows[0].bound}")
    if r is not None:
        ax.axhline(check_int("r", r, minimum=1), color="C1", linestyle=":", label=f"LoRA rank {r}")
    ax.set(xlabel="k = number of Σ_ij that differ from the shared one", ylabel="rank of ΔW",
           title="partial-Σ ablation")
    ax.legend(fontsize="small")
    return fig
