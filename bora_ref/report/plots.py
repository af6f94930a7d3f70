"""Figures of ``bora_ref`` (matplotlib); every function returns a new ``Figure``.

All of them follow the one figure style of [`bora_ref.report.style`][bora_ref.report.style]: Okabe–Ito colours with
a distinct line style and marker per series, labelled axes with units, legends outside the data
with an entry for every series, and a labelled colourbar on every image.

No ``pyplot``: figures are built with ``matplotlib.figure.Figure`` on their own Agg canvas, so
nothing touches matplotlib's global state (current figure, backend selection) and the functions
work headless, in threads and in notebooks alike (``fig.savefig(path)`` to write a PNG; a
notebook shows a returned ``Figure`` with ``IPython.display.display``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import LogLocator, MaxNLocator, NullFormatter

from .. import numpy_ref
from .._arrays import as_float64
from .._validation import BoRAValueError, check_b, check_int
from ..analysis.params import best_b, param_count
from ..analysis.rank import rank_bound
from ..partition import block_sizes
from .style import PALETTE, decoration, image_with_colorbar, legend_outside, new_figure, series_style
from .sweep import AblationRow, LayerShape, SweepRow

__all__ = [
    "plot_ablation",
    "plot_block_heatmap",
    "plot_bora_schematic",
    "plot_curves",
    "plot_matrices",
    "plot_overhead_vs_b",
    "plot_rank_vs_b",
    "plot_spectra",
]


def _label(model: str, module: str, m: int, n: int, sep: str = " ") -> str:
    shape = f"{m}×{n}"
    name = " ".join(x for x in (model, module) if x and x not in (shape, f"{m}x{n}"))
    return f"{name}{sep}({shape})" if name else shape


def _plain_log_ticks(ax: Any) -> None:
    """Ticks at 1, 2, 5, 10, 20, ... labelled as plain numbers on both log axes."""
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        axis.set_major_formatter("{x:g}")
        axis.set_minor_formatter(NullFormatter())


def _non_empty(name: str, items: Sequence[Any], kind: type) -> list[Any]:
    items = list(items)
    if not items or not all(isinstance(x, kind) for x in items):
        raise BoRAValueError(f"{name} must be a non-empty sequence of {kind.__name__}, got {items!r:.80}")
    return items


def _markevery(k: int) -> int:
    """Every how many points to draw a marker: about 12 markers per series, so lines stay readable."""
    return max(1, k // 12)


def plot_rank_vs_b(rows: Sequence[SweepRow], *, ncols: int = 3) -> Figure:
    """Rank against ``b``: BoRA measured and its bound, LoRA, and LoRA with BoRA's parameter budget.

    One panel per layer shape, one colour per ``r``, one line style and marker per kind of
    series (named in the legend); log-log axes. A measured marker on the dashed bound line
    means the bound is attained.

    Args:
        rows: from [`bora_ref.report.sweep.rank_sweep`][bora_ref.report.sweep.rank_sweep] (any subset).
        ncols: panels per row.

    Raises:
        ValueError: ``rows`` empty or not ``SweepRow`` items.
    """
    rows = _non_empty("rows", rows, SweepRow)
    ncols = check_int("ncols", ncols, minimum=1)
    shapes = list(dict.fromkeys((x.model, x.module, x.m, x.n) for x in rows))
    rs = sorted({x.r for x in rows})
    fig, axes = new_figure(min(ncols, len(shapes)), -(-len(shapes) // ncols), width=4.2)
    for ax, shape in zip(axes, shapes):
        mine = [x for x in rows if (x.model, x.module, x.m, x.n) == shape]
        for r in sorted({x.r for x in mine}):
            color = PALETTE[rs.index(r) % len(PALETTE)]
            series = sorted((x for x in mine if x.r == r), key=lambda x: x.b)
            bs = [x.b for x in series]
            ax.plot(bs, [x.bound for x in series], "--", color=color, label=f"bound min(br, m, n), r={r}")
            ax.plot(bs, [x.measured for x in series], "o", color=color, markersize=5, linestyle="none",
                    label=f"BoRA measured, r={r}")
            ax.plot(bs, [x.lora_rank for x in series], ":", marker="s", markersize=3, color=color, label=f"LoRA, r={r}")
            ax.plot(bs, [x.equal_budget_lora_rank for x in series], "-.", marker="^", markersize=3, color=color,
                    label=f"LoRA with BoRA's parameters, r={r}")
        ax.set(xscale="log", yscale="log", xlabel="blocks b", ylabel="rank of ΔW")
        ax.set_title(_label(*shape, sep="\n"), fontsize="medium")
        _plain_log_ticks(ax)
    for ax in axes[len(shapes):]:
        ax.set_visible(False)
    fig.set_figwidth(fig.get_figwidth() + 3.0)  # room for the legend
    legend_outside(fig)
    return fig


def plot_spectra(
    spectra: Mapping[str, Any],
    *,
    title: str = "singular values of ΔW",
    normalize: bool = True,
    tolerances: Mapping[str, float] | None = None,
) -> Figure:
    """Singular-value spectra side by side (e.g. LoRA vs BoRA), log scale.

    The singular values are written $s_k$ (σ is BoRA's diagonals). Zeros cannot be drawn on a log
    axis and are left out. To hide rounding noise, pass only the values above a rank tolerance
    (e.g. ``info.singular_values[:info.rank]`` of a ``RankInfo``).

    Args:
        spectra: label -> ``(k,)`` singular values (NumPy or torch, non-negative).
        title: axes title.
        normalize: divide every spectrum by its largest value, $s_k / s_1$ (compare shapes, not
            scales).
        tolerances: label of a spectrum -> a rank tolerance in the plotted units (relative to
            $s_1$ when ``normalize``); drawn as a dashed line in that spectrum's colour.

    Raises:
        ValueError: ``spectra`` empty, a spectrum that is not a finite non-negative vector, or a
            tolerance for a label not in ``spectra``.
    """
    if not isinstance(spectra, Mapping) or not spectra:
        raise BoRAValueError(f"spectra must be a non-empty mapping label -> singular values, got {spectra!r:.80}")
    tolerances = dict(tolerances or {})
    unknown = sorted(set(tolerances) - set(spectra))
    if unknown:
        raise BoRAValueError(f"tolerances has labels {unknown} that are not in spectra {list(spectra)}")
    fig, (ax,) = new_figure(width=5.2)
    for i, (label, values) in enumerate(spectra.items()):
        S, _ = as_float64(f"spectra[{label!r}]", values, ndim=1)
        if S.min() < 0:
            raise BoRAValueError(f"spectra[{label!r}] must be non-negative singular values, got a minimum of {S.min():g}")
        S = np.sort(S)[::-1]
        if normalize and S[0] > 0:
            S = S / S[0]
        k = np.flatnonzero(S > 0)
        style = series_style(i)
        ax.plot(k + 1, S[k], markersize=4, markevery=_markevery(k.size), label=label, **style)
        if label in tolerances:
            ax.axhline(float(tolerances[label]), color=style["color"], linestyle=(0, (6, 2)), linewidth=1.0,
                       label=f"rank tolerance, {label}")
    ax.set(yscale="log", xlabel="index k", ylabel="s_k / s_1 (ratio)" if normalize else "s_k", title=title)
    legend_outside(ax)
    return fig


def plot_block_heatmap(B: Any, A: Any, sigma: Any, *, max_entries: int = 4_000_000) -> Figure:
    """Heatmap of ΔW (from [`bora_ref.numpy_ref.delta_weight`][bora_ref.numpy_ref.delta_weight]) with the block grid drawn.

    Args:
        B: ``(m, r)``.
        A: ``(r, n)``.
        sigma: ``(b, b, r)``; NumPy or torch, any float dtype.
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
    fig, (ax,) = new_figure(width=5.6, height=5.6 * min(2.0, max(0.5, m / n)))
    image_with_colorbar(ax, delta, label="entry of ΔW", aspect="auto")
    for edge in np.cumsum(block_sizes(m, b))[:-1]:
        decoration(ax.axhline(edge - 0.5, color="k", linewidth=0.6))
    for edge in np.cumsum(block_sizes(n, b))[:-1]:
        decoration(ax.axvline(edge - 0.5, color="k", linewidth=0.6))
    ax.set(title=f"ΔW ({m}×{n}), b={b}, r={B64.shape[1]}; black lines: block edges\nblock (i, j) = B_i diag(Σ_ij) A_j",
           xlabel="column (input feature), 0..n-1", ylabel="row (output feature), 0..m-1")
    return fig


def plot_matrices(
    matrices: Mapping[str, Any],
    *,
    label: str = "entry",
    xlabel: str = "column",
    ylabel: str = "row",
    ncols: int | None = None,
    panel_width: float = 3.0,
) -> Figure:
    """Matrices side by side on one shared, zero-centred colour scale with one colourbar.

    One scale for all panels, so equal colours mean equal values across panels.

    Args:
        matrices: panel title -> 2-D array.
        label: what the colour shows (the colourbar's label).
        xlabel: x-axis label of every panel.
        ylabel: y-axis label of every panel.
        ncols: panels per row (default: all in one row).
        panel_width: inches per panel.

    Raises:
        ValueError: ``matrices`` empty or an entry that is not a 2-D finite array.

    Examples:
        >>> fig = plot_matrices({"I": np.eye(2), "-2 I": -2 * np.eye(2)}, label="entry")
        >>> len(fig.axes), fig.axes[0].get_images()[0].get_clim()  # two panels, one colourbar
        (3, (-2.0, 2.0))
    """
    if not isinstance(matrices, Mapping) or not matrices:
        raise BoRAValueError(f"matrices must be a non-empty mapping title -> 2-D array, got {matrices!r:.80}")
    arrays = {}
    for title, values in matrices.items():
        arrays[title], _ = as_float64(f"matrices[{title!r}]", values, ndim=2)
    ncols = len(arrays) if ncols is None else check_int("ncols", ncols, minimum=1)
    nrows = -(-len(arrays) // ncols)
    fig, axes = new_figure(min(ncols, len(arrays)), nrows, width=panel_width, height=panel_width * 0.9)
    limit = max(float(np.abs(x).max()) for x in arrays.values()) or 1.0
    used = list(axes[: len(arrays)])
    for i, (ax, (title, values)) in enumerate(zip(used, arrays.items())):
        image = ax.imshow(values, cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
        ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_locator(MaxNLocator(integer=True))
        if i == len(used) - 1:  # one colourbar for the shared scale
            fig.colorbar(image, ax=used, shrink=0.85).set_label(label)
    for ax in axes[len(arrays):]:
        ax.set_visible(False)
    return fig


def plot_curves(
    curves: Mapping[str, Any],
    *,
    xlabel: str,
    ylabel: str,
    title: str = "",
    logy: bool = False,
    logx: bool = False,
    width: float = 5.6,
) -> Figure:
    """Line plot of several series, each in its own style, with the legend outside the data.

    Args:
        curves: label -> ``y`` (plotted against 1, 2, ...) or ``(x, y)``.
        xlabel: x-axis label (with units).
        ylabel: y-axis label (with units).
        title: axes title.
        logy: logarithmic y axis.
        logx: logarithmic x axis.
        width: inches.

    Raises:
        ValueError: ``curves`` empty, a curve that is not 1-D, or ``x`` and ``y`` of different lengths.

    Examples:
        >>> fig = plot_curves({"loss": [1.0, 0.5, 0.25]}, xlabel="step", ylabel="loss (nats)")
        >>> line = fig.axes[0].get_lines()[0]
        >>> line.get_xdata().tolist(), line.get_ydata().tolist()
        ([1.0, 2.0, 3.0], [1.0, 0.5, 0.25])
    """
    if not isinstance(curves, Mapping) or not curves:
        raise BoRAValueError(f"curves must be a non-empty mapping label -> y or (x, y), got {curves!r:.80}")
    if not xlabel or not ylabel:
        raise BoRAValueError(f"xlabel and ylabel must be non-empty, got {xlabel!r} and {ylabel!r}")
    fig, (ax,) = new_figure(width=width)
    for i, (label, curve) in enumerate(curves.items()):
        if isinstance(curve, tuple) and len(curve) == 2:
            x, _ = as_float64(f"curves[{label!r}] x", np.asarray(curve[0], dtype=float), ndim=1)
            y, _ = as_float64(f"curves[{label!r}] y", np.asarray(curve[1], dtype=float), ndim=1)
        else:
            y, _ = as_float64(f"curves[{label!r}]", np.asarray(curve, dtype=float), ndim=1)
            x = np.arange(1, y.size + 1, dtype=float)
        if x.shape != y.shape:
            raise BoRAValueError(f"curves[{label!r}] has {x.size} x values and {y.size} y values; they must match")
        ax.plot(x, y, markersize=4, markevery=_markevery(y.size), label=label, **series_style(i))
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    if logy:
        ax.set_yscale("log")
    if logx:
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter("{x:g}")
    legend_outside(ax, fontsize="x-small" if len(curves) > 8 else "small")
    return fig


def plot_overhead_vs_b(shapes: Sequence[LayerShape | tuple[int, int]], bs: Sequence[int], *, r: int = 8) -> Figure:
    """Parameter cost of BoRA against ``b``: Σ overhead over LoRA, and cost per unit of rank.

    Left: $100 \\, b^2 r / (r(m + n))$, the extra parameters over LoRA of the same ``r`` (it does
    not depend on ``r``). Right: parameters per unit of the rank bound relative to LoRA,
    $(r(m+n) + b^2 r) / (b r (m + n)) = 1/b + b/(m + n)$ for ``r <= m/b, n/b``, with the
    [`bora_ref.analysis.params.best_b`][bora_ref.analysis.params.best_b] of every shape marked by a star.

    Args:
        shapes: [`bora_ref.report.sweep.LayerShape`][bora_ref.report.sweep.LayerShape] items or ``(m, n)`` tuples.
        bs: block counts to draw (each ``1 <= b <= min(m, n)`` per shape).
        r: rank per block used for the counts.

    Raises:
        ValueError: empty inputs or a ``b`` that does not fit a shape.
    """
    if not shapes or not bs:
        raise BoRAValueError(f"shapes and bs must not be empty, got {len(shapes)} shapes and bs={list(bs)}")
    fig, (left, right) = new_figure(2, width=4.6)
    best_x, best_y = [], []
    for i, s in enumerate(shapes):
        label, m, n = (_label(s.model, s.module, s.m, s.n), s.m, s.n) if isinstance(s, LayerShape) else (f"{s[0]}×{s[1]}", *s)
        counts = [param_count(m, n, r, b) for b in bs]
        style = series_style(i)
        left.plot(bs, [c.overhead_pct for c in counts], markersize=3, label=label, **style)
        per_rank = [c.total / (rank_bound(m, n, r, b) * (m + n)) for b, c in zip(bs, counts)]
        right.plot(bs, per_rank, markersize=3, label=label, **style)
        best = best_b(m, n)
        best_x.append(best)
        best_y.append(param_count(m, n, r, best).total / (rank_bound(m, n, r, best) * (m + n)))
    right.plot(best_x, best_y, "*", color="k", markersize=10, linestyle="none", label="best b of each shape (best_b)")
    fig.set_figwidth(fig.get_figwidth() + 3.0)  # room for the legend
    left.set(xscale="log", yscale="log", xlabel="blocks b", ylabel="Σ parameters / LoRA parameters (%)")
    left.set_title("BoRA's overhead over LoRA\n(same r)", fontsize="medium")
    right.set(xscale="log", yscale="log", xlabel="blocks b", ylabel="parameters per unit of rank / LoRA's (ratio)")
    right.set_title(f"cost per unit of rank\n(r={r})", fontsize="medium")
    for ax in (left, right):
        ax.xaxis.set_major_formatter("{x:g}")
        ax.xaxis.set_minor_formatter(NullFormatter())
    legend_outside(fig, fontsize="x-small")
    return fig


def plot_ablation(rows: Sequence[AblationRow], *, r: int | None = None) -> Figure:
    """Rank of ΔW against the number ``k`` of blocks with their own Σ_ij (partial-Σ ablation).

    Args:
        rows: from [`bora_ref.report.sweep.partial_sigma_ablation`][bora_ref.report.sweep.partial_sigma_ablation].
        r: draw LoRA's rank ``r`` as a reference line when given.

    Raises:
        ValueError: ``rows`` empty or not ``AblationRow`` items.
    """
    rows = _non_empty("rows", rows, AblationRow)
    fig, (ax,) = new_figure(width=5.2)
    ax.step([x.k for x in rows], [x.rank for x in rows], where="post", markersize=3, label="measured rank",
            **series_style(0))
    ax.axhline(rows[0].bound, color=PALETTE[1], linestyle="--", linewidth=1.0, label=f"bound min(br, m, n) = {rows[0].bound}")
    if r is not None:
        ax.axhline(check_int("r", r, minimum=1), color=PALETTE[2], linestyle=":", linewidth=1.2, label=f"LoRA's rank r = {r}")
    ax.set(xlabel="k = number of Σ_ij that differ from the shared one", ylabel="rank of ΔW",
           title="partial-Σ ablation")
    legend_outside(ax)
    return fig


def plot_bora_schematic(m: int = 12, n: int = 15, r: int = 2, b: int = 3) -> Figure:
    """The BoRA update drawn as blocks: $\\Delta W_{[i,j]} = B_i \\, \\mathrm{diag}(\\Sigma_{ij}) \\, A_j$.

    Four panels, one cell per matrix entry: ``B (m, r)`` cut into ``b`` row blocks $B_i$; the
    ``b × b`` grid of diagonals $\\Sigma_{ij}$ (``r`` entries each, drawn on the diagonal of an
    ``r × r`` cell); ``A (r, n)`` cut into ``b`` column blocks $A_j$; and ``ΔW (m, n)``, whose
    block ``(i, j)`` is coloured like $B_i$ and $A_j$. Blocks follow ``numpy.array_split``
    (larger blocks first).

    Args:
        m: rows of the weight (small: one cell per entry is drawn).
        n: columns of the weight.
        r: rank per block product.
        b: blocks per side, ``1 <= b <= min(m, n, 8)``.

    Raises:
        ValueError: invalid sizes, ``b > 8``, ``r > 8`` or ``m, n > 64`` (the drawing would be
            unreadable).

    Examples:
        >>> fig = plot_bora_schematic(m=12, n=15, r=2, b=3)
        >>> [ax.get_title() for ax in fig.axes]
        ['B (12×2)', 'Σ: 3×3 diagonals of 2', 'A (2×15)', 'ΔW (12×15), rank ≤ 6']
    """
    m = check_int("m", m, minimum=1)
    n = check_int("n", n, minimum=1)
    r = check_int("r", r, minimum=1)
    b = check_b(b, m, n)
    if b > 8 or max(m, n) > 64 or r > 8:
        raise BoRAValueError(f"plot_bora_schematic draws one cell per entry: needs b <= 8, r <= 8 and m, n <= 64, "
                             f"got m={m}, n={n}, r={r}, b={b}")
    rows, cols = np.cumsum((0, *block_sizes(m, b))), np.cumsum((0, *block_sizes(n, b)))
    row_colors = [PALETTE[i % len(PALETTE)] for i in range(b)]
    col_colors = [PALETTE[(b + j) % len(PALETTE)] for j in range(b)]
    fig, axes = new_figure(4, width=2.6, height=3.4,
                           gridspec_kw={"width_ratios": [r + 1, 1.6 * (b * r + 1), n + 1, n + 1]})
    ax_B, ax_S, ax_A, ax_W = axes

    def cell(ax: Any, x: float, y: float, w: float, h: float, color: str, alpha: float = 0.55) -> None:
        ax.add_patch(Rectangle((x, y), w, h, facecolor=color, alpha=alpha, edgecolor="white", linewidth=0.5))

    def frame(ax: Any, x: float, y: float, w: float, h: float) -> None:
        ax.add_patch(Rectangle((x, y), w, h, fill=False, edgecolor="k", linewidth=1.4))

    # B (m, r): row blocks B_i
    for i in range(b):
        for row in range(rows[i], rows[i + 1]):
            for k in range(r):
                cell(ax_B, k, row, 1, 1, row_colors[i])
        frame(ax_B, 0, rows[i], r, rows[i + 1] - rows[i])
        ax_B.text(r / 2, (rows[i] + rows[i + 1]) / 2, f"$B_{i + 1}$", ha="center", va="center", fontsize=11)
    ax_B.set(xlim=(-0.5, r + 0.5), ylim=(m + 0.5, -0.5), title=f"B ({m}×{r})",
             xlabel=f"channel k (r={r})", ylabel=f"output row (m={m})")

    # the b×b grid of diagonals: cell (i, j) holds the r entries of Σ_ij on its diagonal
    for i in range(b):
        for j in range(b):
            for k in range(r):
                cell(ax_S, j * r + k, i * r + k, 1, 1, PALETTE[6], alpha=0.35 + 0.5 * (k + 1) / r)
            frame(ax_S, j * r, i * r, r, r)
            ax_S.text(j * r + r - 0.5, i * r + 0.5, f"$\\Sigma_{{{i + 1}{j + 1}}}$", ha="center", va="center",
                      fontsize=8 if b <= 4 else 6)
    ax_S.set(xlim=(-0.5, b * r + 0.5), ylim=(b * r + 0.5, -0.5), title=f"Σ: {b}×{b} diagonals of {r}",
             xlabel=f"block j (r={r} channels each)", ylabel="block i")

    # A (r, n): column blocks A_j
    for j in range(b):
        for col in range(cols[j], cols[j + 1]):
            for k in range(r):
                cell(ax_A, col, k, 1, 1, col_colors[j])
        frame(ax_A, cols[j], 0, cols[j + 1] - cols[j], r)
        ax_A.text((cols[j] + cols[j + 1]) / 2, r / 2, f"$A_{j + 1}$", ha="center", va="center", fontsize=11)
    ax_A.set(xlim=(-0.5, n + 0.5), ylim=(r + 0.5, -0.5), title=f"A ({r}×{n})",
             xlabel=f"input column (n={n})", ylabel=f"channel k (r={r})")

    # ΔW (m, n): block (i, j) = B_i diag(Σ_ij) A_j, half B_i's colour and half A_j's
    for i in range(b):
        for j in range(b):
            h, w = rows[i + 1] - rows[i], cols[j + 1] - cols[j]
            ax_W.add_patch(Rectangle((cols[j], rows[i]), w, h / 2, facecolor=row_colors[i], alpha=0.45, linewidth=0))
            ax_W.add_patch(Rectangle((cols[j], rows[i] + h / 2), w, h / 2, facecolor=col_colors[j], alpha=0.45,
                                     linewidth=0))
            frame(ax_W, cols[j], rows[i], w, h)
            ax_W.text(cols[j] + w / 2, rows[i] + h / 2, f"$B_{i + 1}\\Sigma_{{{i + 1}{j + 1}}}A_{j + 1}$",
                      ha="center", va="center", fontsize=8 if b <= 3 else 6)
    ax_W.set(xlim=(-0.5, n + 0.5), ylim=(m + 0.5, -0.5), title=f"ΔW ({m}×{n}), rank ≤ {rank_bound(m, n, r, b)}",
             xlabel=f"input column (n={n})", ylabel=f"output row (m={m})")
    for ax in axes:
        ax.set_aspect("equal")
        ax.tick_params(labelsize=7)
    fig.suptitle(f"BoRA with b={b}, r={r}: " + r"$\Delta W_{[i,j]} = B_i \, \mathrm{diag}(\Sigma_{ij}) \, A_j$", fontsize=11)
    return fig
