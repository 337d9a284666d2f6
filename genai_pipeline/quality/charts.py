"""The report's charts as PNG data URIs: per-column real-vs-synthetic histograms and bars, the
column-pair heatmap, and strips of image thumbnails.

Charts are drawn on bare matplotlib :class:`~matplotlib.figure.Figure` objects with the Agg canvas
(no pyplot: no global figure registry, no GUI backend, safe inside a worker), small and at 80 dpi
so a 15-column table stays well under two megabytes. Text drawn into a chart is plain text
(``text.parse_math`` off): a ``$`` in a category prints as a dollar.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import matplotlib as mpl
import matplotlib.dates as mdates
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, PercentFormatter
from PIL import Image

from genai_pipeline.columns import dense, is_categorical, is_numeric, to_float
from genai_pipeline.quality.expectations import DISCRETE_NUMBERS

#: the two series' colours in every chart (blue and orange stay apart for colour-blind readers)
REAL_COLOUR = "#1f5fa8"
SYNTHETIC_COLOUR = "#e8741c"
DPI = 80
CHART_SIZE = (4.4, 2.8)  # inches: 352 × 224 px
HISTOGRAM_BINS = 30
#: categorical charts show this many values; the rest are summed into "(other)"
TOP_CATEGORIES = 20
#: 1 − pair_trend at or above this is the darkest heatmap cell; a fixed scale (not the run's
#: maximum) keeps the colours comparable from one night to the next
PAIR_DIFFERENCE_SCALE = 0.5
#: heatmaps of more columns than this are not annotated (the numbers would overlap)
ANNOTATE_PAIRS_UP_TO = 16
#: thumbnails are scaled to about this size: tiny images (8×8) up by whole factors with nearest
#: neighbour so their pixels stay sharp, large ones down
THUMBNAIL_PX = 56
THUMBNAIL_GAP_PX = 4
#: label text longer than this is cut in charts (the HTML caption keeps the full name)
LABEL_CHARS = 22

_NULL, _OTHER = "(null)", "(other)"
_STYLE = {
    "font.size": 8,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "legend.fontsize": 8,
    "legend.frameon": False,
    "text.parse_math": False,  # a "$" in a category must print as a dollar, not start TeX
}


def is_pair(metric: dict[str, Any]) -> bool:
    """Whether a metric row scores a pair of columns (``column`` names them ``a × b``)."""
    return metric.get("scope") == "pair" and metric.get("metric") == "pair_trend"


# -- column charts ---------------------------------------------------------------------------------------


@contextmanager
def _figure(size: tuple[float, float] = CHART_SIZE) -> Iterator[Figure]:
    with mpl.rc_context(_STYLE):
        figure = Figure(figsize=size, dpi=DPI, layout="constrained")
        FigureCanvasAgg(figure)
        yield figure


def _series_legend(figure: Figure) -> None:
    """Above the plot, never over the data (the HTML legend is lost when a chart is copied)."""
    figure.legend(loc="outside upper right", ncols=2, handlelength=1.2, columnspacing=1.0)


def _png_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _figure_uri(figure: Figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    return _png_uri(buffer.getvalue())


def _cut(label: str) -> str:
    """Long labels keep both ends: values often differ only at the end ("… number 12")."""
    if len(label) <= LABEL_CHARS:
        return label
    head = (LABEL_CHARS - 1) // 2
    return label[:head] + "…" + label[-(LABEL_CHARS - 1 - head) :]


def column_chart(real: pa.ChunkedArray, synthetic: pa.ChunkedArray | None) -> tuple[str | None, list[str]]:
    """``(PNG data URI or None, notes)`` for one column.

    The synthetic column is compared in the real column's type; when it cannot be cast (another
    type altogether), the chart shows the real side and says so.
    """
    real_values, notes = dense(real), []
    if len(real_values) == 0:
        return None, ["no real rows in the sample"]
    other = dense(synthetic) if synthetic is not None else None
    if other is not None and other.type != real_values.type:
        try:
            other = other.cast(real_values.type)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            notes.append(f"synthetic values are {other.type}: not comparable")
            other = None
    type_ = real_values.type
    present = real_values.drop_null()
    few_integers = pa.types.is_integer(type_) and len(pc.unique(present)) <= DISCRETE_NUMBERS
    if is_numeric(type_) and not few_integers and _numbers(real_values).size:
        uri, outside = _histogram(real_values, other)
        if outside:
            share = f"{outside:.1%}" if outside >= 0.001 else "under 0.1%"
            notes.append(f"{share} of synthetic values outside the real range (not drawn)")
        return uri, notes
    if is_categorical(type_) or is_numeric(type_) or pa.types.is_null(type_):
        uri, distinct = _bars(real_values, other)
        if distinct > TOP_CATEGORIES:
            notes.append(f"{distinct:,} distinct values: the {TOP_CATEGORIES} most common are drawn")
        return uri, notes
    notes.append("this type is not charted")
    return None, notes


def _numbers(array: pa.Array) -> np.ndarray:
    """Finite values as floats; dates and timestamps as days since 1970 (matplotlib's default
    date unit, so its date locators and formatters label the axis)."""
    values = to_float(array)
    values = values[np.isfinite(values)]
    type_ = array.type
    if pa.types.is_date64(type_):
        return values / 86_400e3
    if pa.types.is_timestamp(type_):
        return values / (86_400 * {"s": 1, "ms": 1e3, "us": 1e6, "ns": 1e9}[type_.unit])
    return values


def _histogram(real: pa.Array, synthetic: pa.Array | None) -> tuple[str, float]:
    """Overlaid densities on the real range's bins, and the share of synthetic values outside it."""
    real_values = _numbers(real)
    low, high = float(real_values.min()), float(real_values.max())
    edges = np.linspace(low, high, HISTOGRAM_BINS + 1) if high > low else np.array([low - 0.5, low + 0.5])
    series = [("real", real_values, REAL_COLOUR)]
    outside = 0.0
    if synthetic is not None and (synthetic_values := _numbers(synthetic)).size:
        outside = float(((synthetic_values < edges[0]) | (synthetic_values > edges[-1])).mean())
        series.append(("synthetic", synthetic_values, SYNTHETIC_COLOUR))
    with _figure() as figure:
        axes = figure.add_subplot()
        # real as a filled area, synthetic as a line on top: both stay readable where they overlap
        axes.hist(real_values, bins=edges, density=True, histtype="stepfilled", color=REAL_COLOUR, alpha=0.35)
        for label, values, colour in series:
            axes.hist(
                values, bins=edges, density=True, histtype="step", color=colour, linewidth=1.6, label=label
            )
        if pa.types.is_date(real.type) or pa.types.is_timestamp(real.type):
            locator = mdates.AutoDateLocator(minticks=3, maxticks=7)
            axes.xaxis.set_major_locator(locator)
            axes.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
        axes.set_ylabel("density")
        axes.set_yticks([])
        _series_legend(figure)
        return _figure_uri(figure), outside


def _shares(array: pa.Array) -> dict[Any, float]:
    """Each value's share of the rows, null (as ``None``) included."""
    if len(array) == 0:
        return {}
    shares: dict[Any, float] = {None: array.null_count / len(array)} if array.null_count else {}
    present = array.drop_null()
    if len(present):
        for item in pc.value_counts(present).to_pylist():
            shares[item["values"]] = item["counts"] / len(array)
    return shares


def _bars(real: pa.Array, synthetic: pa.Array | None) -> tuple[str, int]:
    """Side-by-side shares of the most common values (by real + synthetic share, so an invented
    synthetic value shows up too), numbers in numeric order, the rest by frequency; and how many
    distinct values there are."""
    real_shares = _shares(real)
    synthetic_shares = _shares(synthetic) if synthetic is not None else {}
    values = [v for v in {**real_shares, **synthetic_shares} if v is not None]
    values.sort(key=lambda v: (-(real_shares.get(v, 0.0) + synthetic_shares.get(v, 0.0)), str(v)))
    kept = values[:TOP_CATEGORIES]
    if is_numeric(real.type):
        kept.sort()
    labels = [_cut(str(value)) for value in kept]
    rows = [[shares.get(value, 0.0) for value in kept] for shares in (real_shares, synthetic_shares)]
    if len(values) > len(kept):
        labels.append(_OTHER)
        for row, shares in zip(rows, (real_shares, synthetic_shares)):
            row.append(sum(shares.get(value, 0.0) for value in values[TOP_CATEGORIES:]))
    if None in real_shares or None in synthetic_shares:
        labels.append(_NULL)
        for row, shares in zip(rows, (real_shares, synthetic_shares)):
            row.append(shares.get(None, 0.0))
    series = [("real", rows[0], REAL_COLOUR)]
    if synthetic is not None:
        series.append(("synthetic", rows[1], SYNTHETIC_COLOUR))
    height = max(CHART_SIZE[1], 0.8 + 0.2 * len(labels))  # about 16 px per category
    with _figure((CHART_SIZE[0], height)) as figure:
        axes = figure.add_subplot()
        positions = np.arange(len(labels))
        width = 0.8 / len(series)
        for i, (label, shares, colour) in enumerate(series):
            axes.barh(positions - 0.4 + width * (i + 0.5), shares, height=width, color=colour, label=label)
        axes.set_yticks(positions, labels)
        axes.invert_yaxis()  # the most common value on top
        # ticks at 1, 2 or 5 × a power of ten: whole percents unless every share is under 5%
        axes.xaxis.set_major_locator(MaxNLocator(nbins=5, steps=[1, 2, 5, 10]))
        decimals = 0 if max(max(shares) for _, shares, _ in series) >= 0.05 else 1
        axes.xaxis.set_major_formatter(PercentFormatter(1.0, decimals=decimals))
        _series_legend(figure)
        return _figure_uri(figure), len(values)


def pair_matrix(metrics: list[dict[str, Any]], columns: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """``(names, symmetric matrix of 1 − pair_trend)``, NaN where a pair has no score.

    The metric names a pair ``"a × b"``; a column whose own name holds " × " is found by trying
    each split against the table's columns.
    """
    known = set(columns)
    pairs = []
    for metric in metrics:
        value = metric.get("value")
        if not is_pair(metric) or not isinstance(value, int | float) or not math.isfinite(value):
            continue
        parts = str(metric.get("column")).split(" × ")
        splits = [(" × ".join(parts[:i]), " × ".join(parts[i:])) for i in range(1, len(parts))]
        first, second = next(
            (s for s in splits if s[0] in known and s[1] in known), splits[0] if splits else ("?", "?")
        )
        pairs.append((first, second, 1.0 - float(value)))
    seen = {name for first, second, _ in pairs for name in (first, second)}
    names = [name for name in columns if name in seen]
    names += sorted(seen - set(names))
    index = {name: i for i, name in enumerate(names)}
    matrix = np.full((len(names), len(names)), np.nan)
    for first, second, difference in pairs:
        matrix[index[first], index[second]] = matrix[index[second], index[first]] = difference
    return names, matrix


def heatmap(names: list[str], matrix: np.ndarray) -> str:
    """The lower triangle only (the matrix is symmetric), so each pair appears once; a pair
    without a score is a grey cell, the unused upper triangle is left blank."""
    below = np.tril(np.ones_like(matrix, dtype=bool), k=-1)[1:, :-1]
    lower = np.where(below, matrix[1:, :-1], np.nan)
    rows, columns = names[1:], names[:-1]
    side = min(max(3.4, 0.42 * len(columns) + 1.8), 10.0)
    with _figure((side + 0.8, side)) as figure:
        axes = figure.add_subplot()
        axes.imshow(np.where(below, 0.0, np.nan), cmap=ListedColormap(["#e4e6ea"]))
        colours = mpl.colormaps["YlOrRd"].with_extremes(bad=(0, 0, 0, 0))
        image = axes.imshow(lower, cmap=colours, vmin=0.0, vmax=PAIR_DIFFERENCE_SCALE)
        axes.set_xticks(range(len(columns)), [_cut(n) for n in columns], rotation=45, ha="right")
        axes.set_yticks(range(len(rows)), [_cut(n) for n in rows])
        axes.spines[:].set_visible(False)
        if len(names) <= ANNOTATE_PAIRS_UP_TO:
            for (i, j), value in np.ndenumerate(lower):
                if not np.isnan(value):
                    dark = value > 0.6 * PAIR_DIFFERENCE_SCALE
                    axes.text(
                        j, i, f"{value:.2f}", ha="center", va="center", color="white" if dark else "black"
                    )
        bar = figure.colorbar(image, ax=axes, extend="max", shrink=0.8)
        bar.set_label("1 − pair_trend")
        return _figure_uri(figure)


# -- image grids ----------------------------------------------------------------------------------


def _thumbnail(image: np.ndarray) -> Image.Image:
    """One uint8 HWC image as a PIL image about THUMBNAIL_PX tall: grayscale stays gray."""
    channels = image.shape[2]
    picture = Image.fromarray(image[..., 0] if channels in (1, 2) else image[..., :3])
    height, width = image.shape[:2]
    if max(height, width) <= THUMBNAIL_PX:
        factor = max(1, round(THUMBNAIL_PX / max(height, width)))
        return picture.resize((width * factor, height * factor), Image.Resampling.NEAREST)
    picture.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX), Image.Resampling.LANCZOS)
    return picture


def image_strip(images: np.ndarray) -> str:
    """Images side by side on a white strip, as one PNG (one request-free image per cell)."""
    thumbnails = [_thumbnail(image) for image in images]
    width = sum(t.width for t in thumbnails) + THUMBNAIL_GAP_PX * (len(thumbnails) - 1)
    height = max(t.height for t in thumbnails)
    mode = "L" if all(t.mode == "L" for t in thumbnails) else "RGB"
    strip = Image.new(mode, (width, height), "white")
    left = 0
    for thumbnail in thumbnails:
        strip.paste(thumbnail.convert(mode), (left, 0))
        left += thumbnail.width + THUMBNAIL_GAP_PX
    buffer = io.BytesIO()
    strip.save(buffer, format="PNG", optimize=True)
    return _png_uri(buffer.getvalue())
