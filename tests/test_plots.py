"""The figures: what they draw, that they render to PNG, and that they leave no global state."""

import subprocess
import sys

import numpy as np
import pytest
from matplotlib.figure import Figure

from bora_ref import numpy_ref, singular_values
from bora_ref.report.plots import plot_ablation, plot_block_heatmap, plot_overhead_vs_b, plot_rank_vs_b, plot_spectra
from bora_ref.report.sweep import partial_sigma_ablation, rank_sweep, sample_factors

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _png(fig: Figure, path) -> bytes:
    fig.savefig(path, format="png", dpi=40)
    return path.read_bytes()


def test_rank_vs_b_draws_the_measured_ranks_per_shape(tmp_path):
    rows = rank_sweep([(24, 18), (9, 30)], rs=[2, 3], bs=[1, 2, 3])
    fig = plot_rank_vs_b(rows, ncols=2)
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert len(visible) == 2
    measured = [line for line in visible[0].lines if line.get_label() == "BoRA r=3"]
    assert list(measured[0].get_ydata()) == [x.measured for x in rows if (x.m, x.r) == (24, 3)]
    assert _png(fig, tmp_path / "rank.png").startswith(PNG_MAGIC)


def test_spectra_are_normalised_and_zeros_left_out(tmp_path):
    S_bora = singular_values(*sample_factors(30, 20, 2, 4))
    S_lora = singular_values(*sample_factors(30, 20, 2, 4, sigma="identical"))
    fig = plot_spectra({"BoRA": S_bora, "LoRA": np.r_[S_lora[:2], np.zeros(18)]})
    bora, lora = fig.axes[0].lines
    np.testing.assert_allclose(bora.get_ydata(), S_bora[S_bora > 0] / S_bora[0])
    assert len(lora.get_ydata()) == 2  # the 18 zeros cannot sit on a log axis
    assert _png(fig, tmp_path / "spectra.png").startswith(PNG_MAGIC)


def test_block_heatmap_shows_delta_weight_and_the_block_grid(tmp_path):
    B, A, sigma = sample_factors(12, 10, 2, 3)
    fig = plot_block_heatmap(B, A, sigma)
    ax = fig.axes[0]
    np.testing.assert_array_equal(ax.images[0].get_array(), numpy_ref.delta_weight(B, A, sigma))
    assert len(ax.lines) == 2 * (3 - 1)  # b - 1 horizontal and b - 1 vertical block edges
    assert _png(fig, tmp_path / "heat.png").startswith(PNG_MAGIC)


def test_overhead_vs_b_draws_b2_over_m_plus_n(tmp_path):
    bs = [1, 2, 4, 8]
    fig = plot_overhead_vs_b([(64, 32), (40, 40)], bs, r=4)
    left = fig.axes[0]
    np.testing.assert_allclose(left.lines[0].get_ydata(), [100 * b * b / (64 + 32) for b in bs])
    assert _png(fig, tmp_path / "overhead.png").startswith(PNG_MAGIC)


def test_ablation_plot(tmp_path):
    rows = partial_sigma_ablation(20, 16, 2, 3)
    fig = plot_ablation(rows, r=2)
    assert list(fig.axes[0].lines[0].get_ydata()) == [x.rank for x in rows]
    assert _png(fig, tmp_path / "ablation.png").startswith(PNG_MAGIC)


def test_plots_never_touch_pyplot():
    code = (
        "import sys; from bora_ref.report.plots import plot_spectra; import numpy as np; "
        "plot_spectra({'a': np.ones(3)}).savefig(sys.argv[1]); "
        "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot was imported'"
    )
    subprocess.run([sys.executable, "-c", code, "/dev/null"], check=True, capture_output=True, timeout=120)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: plot_rank_vs_b([]), "rows must be a non-empty sequence of SweepRow"),
        (lambda: plot_spectra({}), "spectra must be a non-empty mapping"),
        (lambda: plot_spectra({"x": np.array([1.0, -2.0])}), r"spectra\['x'\] must be non-negative"),
        (lambda: plot_block_heatmap(*sample_factors(30, 20, 2, 2), max_entries=100),
         "plot_block_heatmap forms ΔW: m \\* n = 600 exceeds max_entries=100"),
        (lambda: plot_overhead_vs_b([(8, 8)], [9]), r"b must satisfy 1 <= b <= min\(m, n\) = 8"),
        (lambda: plot_ablation([(0, 1, 2)]), "rows must be a non-empty sequence of AblationRow"),
    ],
)
def test_bad_input_names_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()
