"""The figures: what they draw, the one figure style, PNG rendering, and no global state."""

import itertools
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from matplotlib.lines import Line2D

from bora_ref import numpy_ref, rank_bound, singular_values
from bora_ref.report import plots
from bora_ref.report.plots import (
    plot_ablation,
    plot_block_heatmap,
    plot_bora_schematic,
    plot_curves,
    plot_matrices,
    plot_overhead_vs_b,
    plot_rank_vs_b,
    plot_spectra,
)
from bora_ref.report.style import DECORATION, LINESTYLES, PALETTE, new_figure, series_style
from bora_ref.report.sweep import partial_sigma_ablation, rank_sweep, sample_factors

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ROOT = Path(__file__).resolve().parents[1]


def _png(fig: Figure, path) -> bytes:
    fig.savefig(path, format="png", dpi=40)
    return path.read_bytes()


# --------------------------------------------------------------------------------------------
# The figure-style checker, and every figure the library makes
# --------------------------------------------------------------------------------------------


def _colorbar_axes(fig: Figure) -> set:
    return {ax for ax in fig.axes if getattr(ax, "_colorbar", None) is not None}


def _legend_labels(fig: Figure, ax) -> set[str]:
    legends = [leg for leg in [ax.get_legend(), *fig.legends] if leg is not None]
    return {text.get_text() for leg in legends for text in leg.get_texts()}


def style_violations(fig: Figure) -> list[str]:
    """Everything in ``fig`` that breaks the figure style (empty list: none).

    - every data axes has an x and a y label;
    - every image has a colourbar (its own or one with the same colour map and limits), and every
      colourbar has a label;
    - every line is a series in a legend, or marked as a decoration (block edges);
    - every legend entry names a drawn series, and legends do not cover any data axes;
    - no two series of one axes look alike (same colour, line style and marker), and two series
      with identical data differ in their markers (two plain lines on the same data: one hides
      the other; a marker series on a line stays visible);
    - series colours come from the Okabe–Ito palette.
    """
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    problems = []
    cbar_axes = _colorbar_axes(fig)
    colorbars = [ax._colorbar for ax in cbar_axes]
    for cbar in colorbars:
        if not cbar.ax.get_ylabel() and not cbar.ax.get_xlabel():
            problems.append("a colourbar has no label")
    data_axes = [ax for ax in fig.axes if ax.get_visible() and ax not in cbar_axes]
    palette = {to_hex(c) for c in PALETTE}
    legends = [leg for ax in data_axes for leg in [ax.get_legend()] if leg is not None] + list(fig.legends)
    for leg in legends:
        box = leg.get_window_extent(renderer)
        for ax in data_axes:
            if box.overlaps(ax.get_window_extent(renderer)):
                problems.append(f"a legend covers the data of axes {ax.get_title()!r}")
    for ax in data_axes:
        name = repr(ax.get_title())
        if not ax.get_xlabel() or not ax.get_ylabel():
            problems.append(f"axes {name} lacks an axis label (x: {ax.get_xlabel()!r}, y: {ax.get_ylabel()!r})")
        for image in ax.get_images():
            cmap, clim = image.get_cmap().name, image.get_clim()
            if not any(c.mappable.get_cmap().name == cmap and c.mappable.get_clim() == clim for c in colorbars):
                problems.append(f"an image in axes {name} has no colourbar for its colour scale")
        labels = _legend_labels(fig, ax)
        series = [line for line in ax.get_lines() if line.get_gid() != DECORATION]
        drawn = {line.get_label() for line in series}
        for line in series:
            if line.get_label() not in labels:
                problems.append(f"series {line.get_label()!r} in axes {name} is in no legend")
            if to_hex(line.get_color()) not in palette:
                problems.append(f"series {line.get_label()!r} has colour {line.get_color()!r}, not from the palette")
        if ax.get_legend() is not None:
            for text in ax.get_legend().get_texts():
                if text.get_text() not in drawn:
                    problems.append(f"legend entry {text.get_text()!r} of axes {name} names no drawn series")
        for a, b in itertools.combinations(series, 2):
            look = lambda x: (to_hex(x.get_color()), x.get_linestyle(), x.get_marker())  # noqa: E731
            if look(a) == look(b):
                problems.append(f"series {a.get_label()!r} and {b.get_label()!r} look alike: {look(a)}")
            same_data = (np.array_equal(np.asarray(a.get_xdata(), float), np.asarray(b.get_xdata(), float))
                         and np.array_equal(np.asarray(a.get_ydata(), float), np.asarray(b.get_ydata(), float)))
            if same_data and str(a.get_marker()) == str(b.get_marker()):  # e.g. two plain lines on the same data
                problems.append(f"series {a.get_label()!r} and {b.get_label()!r} overlap exactly without distinct markers")
    for legend_owner in fig.legends:
        all_series = {line.get_label() for ax in data_axes for line in ax.get_lines() if line.get_gid() != DECORATION}
        for text in legend_owner.get_texts():
            if text.get_text() not in all_series:
                problems.append(f"figure legend entry {text.get_text()!r} names no drawn series")
    return problems


def _sweep_rows():
    return rank_sweep([(24, 18), (9, 30)], rs=[2, 3], bs=[1, 2, 3])


FIGURES = {  # every figure function of bora_ref.report.plots, on small inputs
    "plot_rank_vs_b": lambda: plot_rank_vs_b(_sweep_rows(), ncols=2),
    "plot_spectra": lambda: plot_spectra(
        {"BoRA": singular_values(*sample_factors(30, 20, 2, 4)),
         "LoRA": singular_values(*sample_factors(30, 20, 2, 4, sigma="identical"))},
        tolerances={"BoRA": 1e-3}),
    "plot_block_heatmap": lambda: plot_block_heatmap(*sample_factors(12, 10, 2, 3)),
    "plot_overhead_vs_b": lambda: plot_overhead_vs_b([(64, 32), (40, 40)], [1, 2, 4, 8], r=4),
    "plot_ablation": lambda: plot_ablation(partial_sigma_ablation(20, 16, 2, 3), r=2),
    "plot_bora_schematic": lambda: plot_bora_schematic(),
    "plot_curves": lambda: plot_curves({f"series {i}": np.arange(5.0) + i for i in range(12)},
                                       xlabel="step", ylabel="loss (nats)"),
    "plot_matrices": lambda: plot_matrices({"a": np.eye(3), "b": -2 * np.ones((3, 4))}, label="entry"),
}


def test_every_figure_function_is_style_checked():
    assert set(FIGURES) == set(plots.__all__), "add every new figure function of bora_ref.report.plots to FIGURES"


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_figure_follows_the_style(name, tmp_path):
    fig = FIGURES[name]()
    assert style_violations(fig) == []
    assert _png(fig, tmp_path / f"{name}.png").startswith(PNG_MAGIC)


def test_the_style_checker_catches_what_it_is_for():
    """A figure with every fault the style forbids: the checker must name each one."""
    fig, (ax,) = new_figure()
    ax.imshow(np.eye(3))  # no colourbar, no axis labels
    ax.plot([1, 2], [3, 4], color=PALETTE[0], label="shown")
    ax.plot([1, 2], [3, 4], color=PALETTE[0], label="hidden under 'shown'")  # same data, same look
    ax.plot([1, 2], [5, 6], color="#123456", label="off palette")
    ax.plot([1, 2], [0, 1], color=PALETTE[1])  # no label: in no legend
    ax.legend(["shown", "hidden under 'shown'", "off palette"], loc="center")  # covers the data
    problems = "\n".join(style_violations(fig))
    for expected in ("lacks an axis label", "no colourbar", "look alike", "overlap exactly", "not from the palette",
                     "is in no legend", "covers the data"):
        assert expected in problems, (expected, problems)


def test_series_styles_are_distinct_and_colourblind_safe():
    styles = [series_style(i) for i in range(32)]
    assert len({(s["color"], s["linestyle"]) for s in styles}) == 32  # 8 colours × 4 line styles
    assert {s["color"] for s in styles} == set(PALETTE) and {s["linestyle"] for s in styles} == set(LINESTYLES)
    assert len({s["marker"] for s in styles[:8]}) == 8
    assert series_style(8)["color"] == series_style(0)["color"] and series_style(8)["linestyle"] != series_style(0)["linestyle"]
    with pytest.raises(ValueError, match="i must be a non-negative int, got -1"):
        series_style(-1)


# --------------------------------------------------------------------------------------------
# What each figure draws
# --------------------------------------------------------------------------------------------


def test_rank_vs_b_draws_the_measured_ranks_per_shape():
    rows = _sweep_rows()
    fig = plot_rank_vs_b(rows, ncols=2)
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert len(visible) == 2
    (measured,) = [line for line in visible[0].lines if line.get_label() == "BoRA measured, r=3"]
    assert list(measured.get_ydata()) == [x.measured for x in rows if (x.m, x.r) == (24, 3)]
    (bound,) = [line for line in visible[0].lines if line.get_label() == "bound min(br, m, n), r=3"]
    assert list(bound.get_ydata()) == [min(3 * b, 24, 18) for b in (1, 2, 3)]


def test_spectra_are_normalised_and_zeros_left_out():
    S_bora = singular_values(*sample_factors(30, 20, 2, 4))
    S_lora = singular_values(*sample_factors(30, 20, 2, 4, sigma="identical"))
    fig = plot_spectra({"BoRA": S_bora, "LoRA": np.r_[S_lora[:2], np.zeros(18)]}, tolerances={"LoRA": 1e-2})
    ax = fig.axes[0]
    bora, lora, tol = ax.lines
    np.testing.assert_allclose(bora.get_ydata(), S_bora[S_bora > 0] / S_bora[0])
    assert len(lora.get_ydata()) == 2  # the 18 zeros cannot sit on a log axis
    assert list(tol.get_ydata()) == [1e-2, 1e-2] and tol.get_color() == lora.get_color()
    assert ax.get_ylabel().startswith("s_k / s_1")  # singular values are s_k; σ is BoRA's diagonals


def test_block_heatmap_shows_delta_weight_and_the_block_grid():
    B, A, sigma = sample_factors(12, 10, 2, 3)
    fig = plot_block_heatmap(B, A, sigma)
    ax = fig.axes[0]
    delta = numpy_ref.delta_weight(B, A, sigma)
    np.testing.assert_array_equal(ax.images[0].get_array(), delta)
    limit = np.abs(delta).max()
    assert ax.images[0].get_clim() == (-limit, limit)  # zero-centred: white is 0
    assert len(ax.lines) == 2 * (3 - 1) and all(line.get_gid() == DECORATION for line in ax.lines)


def test_overhead_vs_b_draws_b2_over_m_plus_n_and_marks_best_b():
    bs = [1, 2, 4, 8]
    fig = plot_overhead_vs_b([(64, 32), (40, 40)], bs, r=4)
    left, right = fig.axes[:2]
    np.testing.assert_allclose(left.lines[0].get_ydata(), [100 * b * b / (64 + 32) for b in bs])
    np.testing.assert_allclose(right.lines[0].get_ydata(), [1 / b + b / 96 for b in bs])  # r <= m/b, n/b here
    stars = right.lines[-1]
    assert list(stars.get_xdata()) == [10, 9]  # best_b: integer argmin of (m + n)/b + b


def test_ablation_plot():
    rows = partial_sigma_ablation(20, 16, 2, 3)
    fig = plot_ablation(rows, r=2)
    assert list(fig.axes[0].lines[0].get_ydata()) == [x.rank for x in rows]


def test_schematic_draws_every_block_and_diagonal():
    m, n, r, b = 10, 13, 3, 4
    fig = plot_bora_schematic(m, n, r, b)
    texts = {t.get_text() for ax in fig.axes for t in ax.texts}
    assert {f"$B_{i}$" for i in range(1, b + 1)} <= texts and {f"$A_{j}$" for j in range(1, b + 1)} <= texts
    assert {f"$\\Sigma_{{{i}{j}}}$" for i in range(1, b + 1) for j in range(1, b + 1)} <= texts
    ax_B, ax_S, ax_A, ax_W = fig.axes
    assert ax_W.get_title().endswith(f"rank ≤ {rank_bound(m, n, r, b)}")
    # B's row blocks follow array_split: heights (3, 3, 2, 2), drawn as framed rectangles
    frames = [p for p in ax_B.patches if not p.get_fill()]
    assert [p.get_height() for p in frames] == [3, 3, 2, 2]
    assert len([p for p in ax_S.patches if p.get_fill()]) == b * b * r  # r diagonal cells per Σ_ij


def test_curves_and_matrices_draw_their_data():
    fig = plot_curves({"a": [3.0, 2.0, 1.0], "b": ([10, 20], [1.0, 4.0])}, xlabel="x", ylabel="y", logy=True)
    a, b = fig.axes[0].lines
    assert list(a.get_xdata()) == [1, 2, 3] and list(a.get_ydata()) == [3, 2, 1]
    assert list(b.get_xdata()) == [10, 20] and fig.axes[0].get_yscale() == "log"
    fig = plot_matrices({"a": np.eye(2), "b": np.full((2, 2), -3.0)})
    images = [im for ax in fig.axes for im in ax.get_images()]
    assert len(images) == 2 and all(im.get_clim() == (-3.0, 3.0) for im in images)  # one shared scale
    assert len(_colorbar_axes(fig)) == 1


def test_plots_never_touch_pyplot():
    code = (
        "import sys; from bora_ref.report.plots import plot_spectra, plot_bora_schematic; import numpy as np; "
        "plot_spectra({'a': np.ones(3)}).savefig(sys.argv[1]); plot_bora_schematic().savefig(sys.argv[1]); "
        "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot was imported'"
    )
    subprocess.run([sys.executable, "-c", code, "/dev/null"], check=True, capture_output=True, timeout=120)


def test_docs_schematic_is_committed():
    """docs/index.md shows docs/assets/bora_schematic.png (made by plot_bora_schematic())."""
    png = ROOT / "docs" / "assets" / "bora_schematic.png"
    assert png.read_bytes().startswith(PNG_MAGIC)
    assert "assets/bora_schematic.png" in (ROOT / "docs" / "index.md").read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: plot_rank_vs_b([]), "rows must be a non-empty sequence of SweepRow"),
        (lambda: plot_spectra({}), "spectra must be a non-empty mapping"),
        (lambda: plot_spectra({"x": np.array([1.0, -2.0])}), r"spectra\['x'\] must be non-negative"),
        (lambda: plot_spectra({"x": np.ones(2)}, tolerances={"y": 0.1}), r"tolerances has labels \['y'\]"),
        (lambda: plot_block_heatmap(*sample_factors(30, 20, 2, 2), max_entries=100),
         "plot_block_heatmap forms ΔW: m \\* n = 600 exceeds max_entries=100"),
        (lambda: plot_overhead_vs_b([(8, 8)], [9]), r"b must satisfy 1 <= b <= min\(m, n\) = 8"),
        (lambda: plot_ablation([(0, 1, 2)]), "rows must be a non-empty sequence of AblationRow"),
        (lambda: plot_bora_schematic(100, 10, 2, 2), "needs b <= 8, r <= 8 and m, n <= 64, got m=100"),
        (lambda: plot_bora_schematic(10, 10, 2, 11), r"b must satisfy 1 <= b <= min\(m, n\) = 10"),
        (lambda: plot_curves({}, xlabel="x", ylabel="y"), "curves must be a non-empty mapping"),
        (lambda: plot_curves({"a": ([1, 2], [1.0])}, xlabel="x", ylabel="y"), r"curves\['a'\] has 2 x values and 1 y"),
        (lambda: plot_curves({"a": [1.0]}, xlabel="", ylabel="y"), "xlabel and ylabel must be non-empty"),
        (lambda: plot_matrices({}), "matrices must be a non-empty mapping"),
        (lambda: plot_matrices({"a": np.ones(3)}), r"matrices\['a'\]"),
    ],
)
def test_bad_input_names_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_image_and_line_types_are_what_the_checker_inspects():
    """Guard against a matplotlib change that would make the checker look at nothing."""
    fig = plot_block_heatmap(*sample_factors(6, 6, 1, 2))
    assert any(isinstance(x, AxesImage) for x in fig.axes[0].get_children())
    fig = plot_curves({"a": [1.0, 2.0]}, xlabel="x", ylabel="y")
    assert isinstance(fig.axes[0].get_lines()[0], Line2D) and _colorbar_axes(fig) == set()
