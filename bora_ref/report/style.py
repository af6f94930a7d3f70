"""The one figure style of ``bora_ref``: palette, series styles, figures, legends and colourbars.

Every figure of [`bora_ref.report.plots`][bora_ref.report.plots] (and of the notebooks) is built with these helpers,
so all of them follow the same rules:

- **Colourblind-safe colours.** The eight colours of Okabe and Ito (*Color Universal Design*,
  2008), in [`PALETTE`][bora_ref.report.style.PALETTE]. Series ``i`` gets colour ``i mod 8`` and a line style and marker
  that change with ``i`` as well ([`series_style`][bora_ref.report.style.series_style]): up to 32 series differ in
  (colour, line style), and no two series of one figure look alike even in grey-scale print.
- **Labelled axes, with units** where a quantity has one (a count, a ratio, a percentage).
- **Real legends, off the data**: every drawn series has an entry, and the legend sits outside
  the axes ([`legend_outside`][bora_ref.report.style.legend_outside]); lines that are not data (block edges, reference lines
  named in the title) are marked with [`decoration`][bora_ref.report.style.decoration].
- **A labelled colourbar on every image** ([`image_with_colorbar`][bora_ref.report.style.image_with_colorbar]), one shared colour scale
  when panels are compared.

No ``pyplot``: [`new_figure`][bora_ref.report.style.new_figure] builds a ``matplotlib.figure.Figure`` on its own Agg canvas,
so nothing touches matplotlib's global state and the figures work headless, in threads and in
notebooks (a notebook displays a returned ``Figure`` with ``IPython.display.display``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colorbar import Colorbar
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from matplotlib.legend import Legend

__all__ = [
    "DECORATION",
    "LINESTYLES",
    "MARKERS",
    "PALETTE",
    "decoration",
    "image_with_colorbar",
    "legend_outside",
    "new_figure",
    "series_style",
]

PALETTE: tuple[str, ...] = (
    "#0072B2",  # blue
    "#D55E00",  # vermillion
    "#009E73",  # bluish green
    "#E69F00",  # orange
    "#CC79A7",  # reddish purple
    "#56B4E9",  # sky blue
    "#000000",  # black
    "#F0E442",  # yellow (last: weakest contrast on white)
)
"""Okabe–Ito colours, in the order series get them."""

LINESTYLES: tuple[str, ...] = ("-", "--", ":", "-.")
MARKERS: tuple[str, ...] = ("o", "s", "^", "D", "v", "P", "X", "*")

DECORATION = "decoration"
"""``gid`` of lines that are not data series (block edges, reference lines): no legend entry needed."""


def series_style(i: int) -> dict[str, Any]:
    """Colour, line style and marker of the ``i``-th series of a figure.

    Colour ``i mod 8`` from [`PALETTE`][bora_ref.report.style.PALETTE]; line style ``(i mod 8 + i // 8) mod 4``, so the
    first 32 series all differ in (colour, line style); marker ``i mod 8``.

    Returns:
        keyword arguments for ``Axes.plot``: ``color``, ``linestyle``, ``marker``.

    Raises:
        ValueError: ``i`` is not a non-negative int.

    Examples:
        >>> series_style(0)
        {'color': '#0072B2', 'linestyle': '-', 'marker': 'o'}
        >>> series_style(8)["color"] == series_style(0)["color"], series_style(8)["linestyle"]
        (True, '--')
    """
    if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or i < 0:
        raise ValueError(f"i must be a non-negative int, got {i!r}")
    i = int(i)
    c = i % len(PALETTE)
    return {
        "color": PALETTE[c],
        "linestyle": LINESTYLES[(c + i // len(PALETTE)) % len(LINESTYLES)],
        "marker": MARKERS[c],
    }


def new_figure(ncols: int = 1, nrows: int = 1, *, width: float = 4.8, height: float = 3.6,
               **subplot_kw: Any) -> tuple[Figure, np.ndarray]:
    """A constrained-layout ``Figure`` on an Agg canvas (no ``pyplot``) and its axes, flattened.

    Args:
        ncols: panels per row.
        nrows: rows of panels.
        width: inches per panel.
        height: inches per panel.
        **subplot_kw: forwarded to ``Figure.subplots`` (e.g. ``gridspec_kw``).

    Returns:
        ``(figure, axes)`` with ``axes`` a 1-D object array of ``nrows * ncols`` ``Axes``.

    Examples:
        >>> fig, axes = new_figure(2)
        >>> len(axes), fig.get_size_inches().tolist()
        (2, [9.6, 3.6])
    """
    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    FigureCanvasAgg(fig)  # savefig / PNG rendering without pyplot
    axes = fig.subplots(nrows, ncols, squeeze=False, **subplot_kw)
    return fig, axes.ravel()


def legend_outside(target: Axes | Figure, *, fontsize: str = "small", **kwargs: Any) -> Legend:
    """A legend placed outside the data: right of an axes, or right of a figure's panels.

    With an ``Axes`` the legend lists that axes' series; with a ``Figure`` it lists the series of
    all panels once (by label), for panels that share their series.

    Examples:
        >>> fig, (ax,) = new_figure()
        >>> _ = ax.plot([1, 2], [3, 4], label="BoRA", **series_style(0))
        >>> [t.get_text() for t in legend_outside(ax).get_texts()]
        ['BoRA']
    """
    if isinstance(target, Figure):
        handles: dict[str, Artist] = {}
        for ax in target.axes:
            for handle, label in zip(*ax.get_legend_handles_labels()):
                handles.setdefault(label, handle)
        return target.legend(list(handles.values()), list(handles), loc="outside right upper", fontsize=fontsize, **kwargs)
    return target.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, fontsize=fontsize, **kwargs)


def decoration(*artists: Artist) -> None:
    """Mark lines that are not data series (grid edges, reference lines) so the style test skips them.

    Examples:
        >>> fig, (ax,) = new_figure()
        >>> edge = ax.axhline(2.5, color="k")
        >>> decoration(edge)
        >>> edge.get_gid(), ax.get_legend_handles_labels()[1]
        ('decoration', [])
    """
    for artist in artists:
        artist.set_gid(DECORATION)
        artist.set_label("_" + DECORATION)


def image_with_colorbar(ax: Axes, values: Any, *, label: str, symmetric: bool = True, limit: float | None = None,
                        cmap: str | None = None, colorbar_axes: Sequence[Axes] | Axes | None = None,
                        **imshow_kw: Any) -> tuple[AxesImage, Colorbar]:
    """``imshow`` with a labelled colourbar; a diverging, zero-centred scale when ``symmetric``.

    Args:
        ax: where to draw.
        values: 2-D array.
        label: the colourbar's label (what the colour means, with its unit).
        symmetric: colour scale ``[-limit, limit]`` with a diverging map (``RdBu_r``); else
            ``viridis`` from the minimum to the maximum.
        limit: the scale's half-width (``symmetric``) to share one scale between panels;
            default ``max |values|``.
        cmap: override the colour map.
        colorbar_axes: the axes the colourbar takes space from (default ``ax``); pass all panels
            that share the scale to draw one colourbar for them.
        **imshow_kw: forwarded to ``imshow``.

    Examples:
        >>> fig, (ax,) = new_figure()
        >>> image, cbar = image_with_colorbar(ax, [[1.0, -2.0], [0.5, 0.0]], label="entry of ΔW")
        >>> image.get_clim(), cbar.ax.get_ylabel()
        ((-2.0, 2.0), 'entry of ΔW')
    """
    values = np.asarray(values)
    if symmetric:
        lim = float(np.abs(values).max()) if limit is None else float(limit)
        lim = lim or 1.0
        imshow_kw.setdefault("vmin", -lim)
        imshow_kw.setdefault("vmax", lim)
    imshow_kw.setdefault("interpolation", "nearest")
    image = ax.imshow(values, cmap=cmap or ("RdBu_r" if symmetric else "viridis"), **imshow_kw)
    owner = ax if colorbar_axes is None else colorbar_axes
    cbar = ax.get_figure().colorbar(image, ax=owner, shrink=0.85)
    cbar.set_label(label)
    return image, cbar
