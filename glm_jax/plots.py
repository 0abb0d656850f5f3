"""Pictures: a GLM attention mask with its Part A / Part B structure, and a run's curves.

Both are drawn with matplotlib's object API (``Figure`` on an Agg canvas), never
pyplot: no global state and no display, so a training process can call them.

The mask picture puts the ``[T, T]`` matrix (row = query, column = key) on an exact
pixel grid: every token is ``cell`` x ``cell`` pixels and the matrix's top-left
corner sits at a known pixel (:class:`MaskFigure`). The matrix is pasted as a raw
image (``Figure.figimage``), not resampled by an axes, so each cell's pixels hold
exactly its colour and a test can read the pattern back from the PNG. Axes, bands
and legend are drawn around it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import textwrap
import warnings
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

logger = logging.getLogger(__name__)

PathLike = Union[str, Path]

# Colours of the mask picture. A visible (query, key) cell takes the colour of the
# key's part: Part A, the Part B span it belongs to, or padding.
PART_A_COLOR = "#4C72B0"
SPAN_COLORS = ("#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3", "#CCB974", "#64B5CD")
PADDING_COLOR = "#BDBDBD"
HIDDEN_COLOR = "#F0F0F3"
GRID_COLOR = "#FFFFFF"
LINE_COLOR = "#222222"

_DPI = 100
_MAX_LABEL_CHARS = 12
_LEGEND_SPANS = 10  # spans listed one by one in the legend; more are summarised


def hex_to_rgb(color: str) -> tuple[int, int, int]:
    """``'#RRGGBB'`` -> ``(r, g, b)`` bytes."""
    color = color.lstrip("#")
    return tuple(int(color[i : i + 2], 16) for i in (0, 2, 4))  # type: ignore[return-value]


def span_color(span: int) -> str:
    """The colour of Part B span ``span`` (1-based), cycling through :data:`SPAN_COLORS`."""
    return SPAN_COLORS[(span - 1) % len(SPAN_COLORS)]


@dataclasses.dataclass(frozen=True)
class TokenRegions:
    """What each of a row's ``T`` tokens is, for colouring.

    Attributes:
      span: ``[T]`` int: 0 for Part A, ``k >= 1`` for a token of Part B span ``k``
        (numbered across the row), -1 for padding.
      blank_of: ``[T]`` int: for a Part A blank (``[MASK]``, ``[sMASK]``,
        ``[gMASK]``), the span that fills it; 0 elsewhere.
      segments: ``(start, sep, end)`` per example in the row (absolute indices):
        Part A is ``[start, sep)``, Part B ``[sep, end)``.
    """

    span: np.ndarray
    blank_of: np.ndarray
    segments: tuple[tuple[int, int, int], ...]

    def __post_init__(self):
        if self.span.shape != self.blank_of.shape or self.span.ndim != 1:
            raise ValueError(f"span and blank_of must both be [T]; got {self.span.shape} and {self.blank_of.shape}")

    def num_spans(self) -> int:
        return int(self.span.max(initial=0))

    def blank_position(self, span: int) -> Optional[int]:
        """The index of the blank that ``span`` fills, if any."""
        hits = np.flatnonzero(self.blank_of == span)
        return int(hits[0]) if hits.size else None


@dataclasses.dataclass(frozen=True)
class MaskFigure:
    """Where the matrix lies in a PNG written by :func:`render_attention_mask`.

    Attributes:
      path: the PNG.
      width, height: the image size in pixels.
      left, top: pixel column and row of the matrix's top-left corner.
      cell: pixels per token on both axes.
      length: T, tokens per side.
    """

    path: Path
    width: int
    height: int
    left: int
    top: int
    cell: int
    length: int

    def cell_center(self, query: int, key: int) -> tuple[int, int]:
        """Pixel ``(row, column)`` inside the cell of ``(query, key)``."""
        if not (0 <= query < self.length and 0 <= key < self.length):
            raise IndexError(f"cell ({query}, {key}) is outside a {self.length}x{self.length} mask")
        half = (self.cell - 1) // 2  # the last pixel row/column of a cell may be grid
        return self.top + query * self.cell + half, self.left + key * self.cell + half


def mask_cell_colors(mask: np.ndarray, regions: TokenRegions) -> np.ndarray:
    """``[T, T, 3]`` uint8: each cell's colour (see the module's colour constants).

    A visible cell takes its key's colour (Part A, its span, or padding; a cell with
    a padding query is padding too); a hidden cell is :data:`HIDDEN_COLOR`.
    """
    t = mask.shape[0]
    key_rgb = np.empty((t, 3), np.uint8)
    for k in range(t):
        s = int(regions.span[k])
        key_rgb[k] = hex_to_rgb(PART_A_COLOR if s == 0 else PADDING_COLOR if s < 0 else span_color(s))
    rgb = np.broadcast_to(key_rgb[None], (t, t, 3)).copy()
    rgb[regions.span < 0] = hex_to_rgb(PADDING_COLOR)
    rgb[~mask] = hex_to_rgb(HIDDEN_COLOR)
    return rgb


def _band_color(regions: TokenRegions, i: int) -> str:
    s = int(regions.span[i])
    if s < 0:
        return PADDING_COLOR
    if s > 0:
        return span_color(s)
    blank = int(regions.blank_of[i])
    return span_color(blank) if blank else PART_A_COLOR


def _short(label: str) -> str:
    # Sentencepiece's word-start mark reads as an underscore in a small font: drop it
    # (a lone mark, a piece of its own, stays).
    label = label.replace("\u2581", "") or label
    label = label.replace("\n", "\\n").replace("\t", "\\t")
    return label if len(label) <= _MAX_LABEL_CHARS else label[: _MAX_LABEL_CHARS - 1] + "…"


def render_attention_mask(
    mask: np.ndarray,
    regions: TokenRegions,
    labels: Sequence[str],
    path: PathLike,
    *,
    title: str = "GLM attention mask",
    subtitle: Optional[str] = None,
    cell: Optional[int] = None,
) -> MaskFigure:
    """Write the ``[T, T]`` mask as a PNG with Part A, Part B and spans marked.

    Args:
      mask: ``[T, T]`` bool, row = query, column = key, True = may attend (from
        glm_jax.model.masks).
      regions: the tokens' parts and spans.
      labels: ``T`` token strings for the axes (shown when cells are >= 8 pixels).
      path: the PNG to write.
      title, subtitle: text above the picture.
      cell: pixels per token; default ``720 // T`` clipped to [3, 18].

    Returns:
      The image geometry (:class:`MaskFigure`).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.collections import PatchCollection
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch, Rectangle

    mask = np.asarray(mask, bool)
    t = mask.shape[0]
    if mask.shape != (t, t):
        raise ValueError(f"mask must be [T, T], got {mask.shape}")
    if len(labels) != t or regions.span.shape != (t,):
        raise ValueError(f"labels ({len(labels)}) and regions ({regions.span.shape}) must match the mask's T={t}")
    cell = int(np.clip(720 // t, 3, 18)) if cell is None else int(cell)
    if cell < 1:
        raise ValueError(f"cell must be >= 1 pixel, got {cell}")

    # The raw matrix image; a 1-pixel white grid separates cells when they are big enough.
    big = np.repeat(np.repeat(mask_cell_colors(mask, regions), cell, axis=0), cell, axis=1)
    if cell >= 6:
        big[cell - 1 :: cell] = hex_to_rgb(GRID_COLOR)
        big[:, cell - 1 :: cell] = hex_to_rgb(GRID_COLOR)

    show_labels = cell >= 8
    font_pt = min(9.0, 0.62 * cell) if show_labels else 8.0
    px_per_pt = _DPI / 72
    label_px = int(_MAX_LABEL_CHARS * 0.62 * font_pt * px_per_pt) + 6 if show_labels else 30
    band, gap = max(6, min(cell, 12)), 3
    side = t * cell
    left = 44 + label_px + band + 2 * gap
    bottom = 40 + label_px + gap
    right = 270
    width = left + side + right
    # The subtitle wraps to the picture's width (about 6.6 px per 9 pt character).
    subtitle_lines = textwrap.wrap(subtitle or "row = query, column = key; a coloured cell may attend",
                                   width=max(40, int((width - 32) / 6.6)))
    top = 64 + 15 * (len(subtitle_lines) - 1) + 24 + band + 2 * gap
    height = top + side + bottom

    fig = Figure(figsize=(width / _DPI, height / _DPI), dpi=_DPI, facecolor="white")
    FigureCanvasAgg(fig)
    # Below the axes (zorder -1): the boundary lines drawn in the axes must show on top.
    fig.figimage(big, xo=left, yo=height - top - side, origin="upper", zorder=-1)
    ax = fig.add_axes((left / width, (height - top - side) / height, side / width, side / height))
    ax.set_facecolor("none")  # the figimage underneath is the matrix
    ax.set_xlim(0, t)
    ax.set_ylim(t, 0)
    for spine in ax.spines.values():
        spine.set_color(LINE_COLOR)
        spine.set_linewidth(0.8)

    if show_labels:
        ticks = np.arange(t) + 0.5
        short = [_short(x) for x in labels]
        ax.set_xticks(ticks, short, rotation=90, fontsize=font_pt)
        ax.set_yticks(ticks, short, fontsize=font_pt)
    else:
        step = next(s for s in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024) if t / s <= 16 or s == 1024)
        ticks = np.arange(0, t, step)
        ax.set_xticks(ticks + 0.5, [str(i) for i in ticks], fontsize=font_pt)
        ax.set_yticks(ticks + 0.5, [str(i) for i in ticks], fontsize=font_pt)
    ax.tick_params(axis="x", length=0, pad=gap)
    ax.tick_params(axis="y", length=0, pad=(band + 2 * gap) / px_per_pt)
    ax.set_xlabel("key: the token attended to", fontsize=9)
    ax.set_ylabel("query: the token attending", fontsize=9)

    # Bands: the keys' parts above the matrix, the queries' parts left of it. A
    # blank in Part A is drawn in the colour of the span that fills it, outlined.
    b, g = band / cell, gap / cell
    bands, outlines = [], []
    for i in range(t):
        color = _band_color(regions, i)
        for rect in (Rectangle((i, -g - b), 1, b), Rectangle((-g - b, i), b, 1)):
            rect.set_facecolor(color)
            bands.append(rect)
        if regions.blank_of[i]:
            outlines += [Rectangle((i, -g - b), 1, b), Rectangle((-g - b, i), b, 1)]
    ax.add_collection(PatchCollection(bands, match_original=True, linewidth=0, antialiased=False, clip_on=False))
    ax.add_collection(
        PatchCollection(outlines, facecolor="none", edgecolor=LINE_COLOR, linewidth=1.0, clip_on=False)
    )

    # Each example's box and its Part A | Part B boundary, with the parts named above.
    for start, sep, end in regions.segments:
        ax.add_patch(Rectangle((start, start), end - start, end - start, fill=False,
                               edgecolor=LINE_COLOR, linewidth=1.2))
        if start < sep < end:
            ax.plot([sep, sep], [start, end], color=LINE_COLOR, linewidth=1.2)
            ax.plot([start, end], [sep, sep], color=LINE_COLOR, linewidth=1.2)
        for lo, hi, name in ((start, sep, "Part A"), (sep, end, "Part B")):
            if hi > lo:
                text = name if (hi - lo) * cell >= 48 else name[-1]
                ax.text((lo + hi) / 2, -2 * g - b, text, ha="center", va="bottom", fontsize=9,
                        fontweight="bold", color=LINE_COLOR, clip_on=False)
    padding = np.flatnonzero(regions.span < 0)
    if padding.size and padding.size * cell >= 48:
        ax.text((padding[0] + padding[-1] + 1) / 2, -2 * g - b, "padding", ha="center", va="bottom",
                fontsize=9, color="#666666", clip_on=False)

    handles = [Patch(facecolor=PART_A_COLOR, label="Part A (bidirectional)")]
    n_spans = regions.num_spans()
    for k in range(1, min(n_spans, _LEGEND_SPANS) + 1):
        blank = regions.blank_position(k)
        where = f", fills blank at {blank}" if blank is not None else ""
        handles.append(Patch(facecolor=span_color(k), label=f"Part B span {k}{where}"))
    if n_spans > _LEGEND_SPANS:
        handles.append(Patch(facecolor="white", label=f"... {n_spans - _LEGEND_SPANS} more spans"))
    if padding.size:
        handles.append(Patch(facecolor=PADDING_COLOR, label="padding"))
    handles.append(Patch(facecolor=HIDDEN_COLOR, edgecolor="#9A9A9A", label="cannot attend"))
    if regions.blank_of.any():
        handles.append(Patch(facecolor="white", edgecolor=LINE_COLOR, label="blank (band): its span's colour"))
    handles.append(Line2D([], [], color=LINE_COLOR, linewidth=1.2, label="Part A | Part B boundary"))
    fig.legend(
        handles=handles, loc="upper left", bbox_to_anchor=((left + side + 20) / width, 1 - top / height),
        frameon=False, fontsize=8.5, title="cell colour = the key's part", title_fontsize=9,
        alignment="left", handlelength=1.4,
    )
    fig.text(16 / width, 1 - 14 / height, title, ha="left", va="top", fontsize=12, fontweight="bold")
    fig.text(16 / width, 1 - 36 / height, "\n".join(subtitle_lines), ha="left", va="top", fontsize=9,
             color="#555555", linespacing=1.3)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # Token labels may hold characters the default font lacks; a missing glyph is cosmetic.
        warnings.filterwarnings("ignore", message=".*[Gg]lyph.*missing")
        fig.savefig(path, dpi=_DPI, facecolor="white")
    return MaskFigure(path, width, height, left, top, cell, t)


# ----------------------------------------------------------------- curves

#: Pixel size of :func:`plot_metrics`' PNG.
CURVE_SIZE = (900, 420)


def metrics_file(run: PathLike) -> Path:
    """``metrics.jsonl`` of a run: the file itself, ``RUN/metrics.jsonl`` or ``RUN/logs/metrics.jsonl``."""
    run = Path(run)
    candidates = [run] if run.suffix == ".jsonl" else [run / "metrics.jsonl", run / "logs" / "metrics.jsonl"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"no metrics.jsonl at {' or '.join(str(c) for c in candidates)}")


def read_metrics(path: PathLike) -> dict[str, list[tuple[int, float]]]:
    """Scalar series of a ``metrics.jsonl``: name -> ``[(step, value), ...]`` by step.

    A resumed run appends the steps after its checkpoint again; the last record of a
    step wins. Lines that are not JSON objects with an int ``step`` (a run killed
    mid-write) are skipped with a warning; non-finite values are dropped.
    """
    series: dict[str, dict[int, float]] = {}
    bad = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            step = record["step"]
            if not isinstance(step, int):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            bad.append(number)
            continue
        for name, value in record.items():
            if name != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                series.setdefault(name, {})[step] = float(value)
    if bad:
        logger.warning("%s: skipped %d malformed line(s), first at line %d", path, len(bad), bad[0])
    return {name: sorted(points.items()) for name, points in series.items()}


def _is_loss(name: str) -> bool:
    return name == "loss" or name.endswith("/loss")


def _is_accuracy(name: str) -> bool:
    return name == "accuracy" or name.endswith("/accuracy")


def plot_metrics(run: PathLike, out: Optional[PathLike] = None, *, title: Optional[str] = None) -> Path:
    """Write the loss (and accuracy, where logged) curves of a run as a PNG.

    Args:
      run: a run's output directory, its ``logs`` directory, or a ``metrics.jsonl``.
      out: the PNG; default ``loss_curve.png`` beside ``metrics.jsonl``.
      title: default: the run directory's name.

    Returns:
      The PNG's path; the image is :data:`CURVE_SIZE` pixels.

    Raises:
      FileNotFoundError: no ``metrics.jsonl``.
      ValueError: it holds no loss values.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    source = metrics_file(run)
    series = read_metrics(source)
    names = sorted(series, key=lambda n: (n.startswith("eval"), n))  # train before eval
    panels = [("loss", [n for n in names if _is_loss(n)])]
    if not panels[0][1]:
        raise ValueError(f"{source} has no loss values (keys: {sorted(series) or 'none'})")
    accuracy = [n for n in names if _is_accuracy(n)]
    if accuracy:
        panels.append(("accuracy", accuracy))
    out = Path(out) if out is not None else source.parent / "loss_curve.png"
    if title is None:
        title = source.parent.parent.name if source.parent.name == "logs" else source.parent.name

    fig = Figure(figsize=(CURVE_SIZE[0] / _DPI, CURVE_SIZE[1] / _DPI), dpi=_DPI, facecolor="white")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (ylabel, names) in zip(axes, panels):
        for i, name in enumerate(names):
            steps, values = zip(*series[name])
            evaluation = name.startswith("eval")
            ax.plot(steps, values, label=name, color=(SPAN_COLORS[0] if evaluation else PART_A_COLOR)
                    if len(names) <= 2 else SPAN_COLORS[i % len(SPAN_COLORS)],
                    linewidth=1.6, marker="o" if evaluation or len(steps) == 1 else None, markersize=4)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.grid(True, color="#E5E5E5", linewidth=0.8)
        ax.spines[["top", "right"]].set_visible(False)
        ax.legend(frameon=False, fontsize=9)
    fig.suptitle(title, fontsize=11, fontweight="bold")
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.14, top=0.86, wspace=0.25)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=_DPI, facecolor="white")
    return out


def write_run_curves(log_dir: PathLike) -> Optional[Path]:
    """``<log_dir>/loss_curve.png`` from ``<log_dir>/metrics.jsonl``, for the trainer.

    A picture must never fail a run: any error (matplotlib missing, no values yet,
    a full disk) is logged as a warning and None returned.
    """
    try:
        return plot_metrics(Path(log_dir) / "metrics.jsonl")
    except Exception as e:  # noqa: BLE001 (see docstring)
        logger.warning("could not write the loss curve in %s: %s", log_dir, e)
        return None

