"""glm_jax/plots.py: the attention-mask picture read back pixel by pixel, and the run curves."""

import json
import logging

import numpy as np
import pytest
from PIL import Image

from glm_jax import plots
from glm_jax.model import masks

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def rgb(color: str) -> np.ndarray:
    return np.array(plots.hex_to_rgb(color), np.uint8)


def read_png(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def cells(image: np.ndarray, fig: plots.MaskFigure) -> np.ndarray:
    """``[T, T, n, n, 3]``: the inner ``n x n`` pixels of every cell. Two pixels at
    each edge are left out: the last holds the 1-pixel grid, and an anti-aliased
    boundary line drawn on a cell edge reaches about 1.5 pixels into its neighbours."""
    t, c = fig.length, fig.cell
    matrix = image[fig.top : fig.top + t * c, fig.left : fig.left + t * c]
    return matrix.reshape(t, c, t, c, 3).transpose(0, 2, 1, 3, 4)[:, :, 2 : c - 2, 2 : c - 2]


def expected_colors(t, part_of, visible) -> np.ndarray:
    """``[T, T, 3]`` from the GLM rule alone: a visible cell shows its key's part."""
    out = np.empty((t, t, 3), np.uint8)
    for q in range(t):
        for k in range(t):
            if not visible(q, k):
                out[q, k] = rgb(plots.HIDDEN_COLOR)
            elif part_of[q] < 0 or part_of[k] < 0:
                out[q, k] = rgb(plots.PADDING_COLOR)
            elif part_of[k] == 0:
                out[q, k] = rgb(plots.PART_A_COLOR)
            else:
                out[q, k] = rgb(plots.span_color(part_of[k]))
    return out


# A row: Part A = [CLS] x [MASK] y [MASK] (sep 5), span 1 fills 2, span 2 fills 4, one padding token.
SEP, T = 5, 12
PART_OF = np.array([0, 0, 0, 0, 0, 1, 1, 1, 2, 2, 2, -1])
REGIONS = plots.TokenRegions(
    span=PART_OF, blank_of=np.array([0, 0, 1, 0, 2, 0, 0, 0, 0, 0, 0, 0]), segments=((0, SEP, T - 1),)
)
LABELS = ["[CLS]", "x", "[MASK]", "y", "[MASK]", "[sop]", "a", "b", "[sop]", "c", "d", "[pad]"]


@pytest.fixture(scope="module")
def sep_picture(tmp_path_factory):
    mask = np.asarray(masks.sep_mask(np.array([SEP]), T))[0, 0]
    path = tmp_path_factory.mktemp("plots") / "mask.png"
    fig = plots.render_attention_mask(mask, REGIONS, LABELS, path, title="test", cell=10)
    return fig, read_png(path)


def test_mask_picture_is_a_png_of_the_stated_size(sep_picture):
    fig, image = sep_picture
    assert fig.path.read_bytes()[:8] == PNG_SIGNATURE
    assert image.shape == (fig.height, fig.width, 3)
    assert fig.cell == 10 and fig.length == T
    # The matrix sits inside the image, with room around it for labels and legend.
    assert 0 < fig.left and fig.left + T * fig.cell < fig.width
    assert 0 < fig.top and fig.top + T * fig.cell < fig.height


def test_mask_picture_has_one_uniform_cell_per_token_in_the_glm_pattern(sep_picture):
    fig, image = sep_picture
    got = cells(image, fig)
    # Every inner pixel of a cell has the cell's colour: one cell per token at 10 px.
    assert (got == got[:, :, :1, :1]).all()
    want = expected_colors(T, PART_OF, lambda q, k: k < SEP or k <= q)
    np.testing.assert_array_equal(got[:, :, 0, 0], want)


def test_mask_picture_regions(sep_picture):
    """The Part A / Part B structure, region by region, read from the pixels."""
    fig, image = sep_picture
    color = cells(image, fig)[:, :, 0, 0]
    a, b = slice(0, SEP), slice(SEP, T - 1)
    hidden, blue = rgb(plots.HIDDEN_COLOR), rgb(plots.PART_A_COLOR)
    assert (color[a, a] == blue).all()  # Part A block: all visible
    assert (color[b, a] == blue).all()  # Part B rows see all of Part A
    assert (color[a, b] == hidden).all()  # Part A rows do not see Part B
    part_b = color[b, b]
    upper = np.triu(np.ones((T - 1 - SEP,) * 2, bool), k=1)
    assert (part_b[upper] == hidden).all()  # Part B is causal: no key after the query
    assert not (part_b[~upper] == hidden).all(axis=-1).any()  # ... and sees itself and before
    assert (color[: T - 1, T - 1] == hidden).all()  # no real token sees the padding
    # cell_center lands in the cell: the [MASK] at 2 seen by the first [sop].
    r, c = fig.cell_center(SEP, 2)
    assert (image[r, c] == blue).all()


def test_bands_mark_blanks_in_their_spans_colour(sep_picture):
    fig, image = sep_picture
    # The key band sits just above the matrix; sample its middle row over each column.
    band_row = fig.top - 3 - 3  # gap of 3 px, band of max(6, min(cell, 12)) = 10 px
    for k, want in [(0, plots.PART_A_COLOR), (2, plots.span_color(1)), (4, plots.span_color(2)),
                    (6, plots.span_color(1)), (9, plots.span_color(2)), (T - 1, plots.PADDING_COLOR)]:
        col = fig.left + k * fig.cell + fig.cell // 2
        assert (image[band_row, col] == rgb(want)).all(), k


def test_packed_picture_keeps_examples_apart(tmp_path):
    # Two examples (A 3 + B 2, A 2 + B 3) and two padding tokens, mask from the model's packed form.
    segment_ids = np.array([1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 0, 0])
    part_a = np.array([1, 1, 1, 0, 0, 1, 1, 0, 0, 0, 0, 0], bool)
    mask = np.asarray(masks.segment_mask(segment_ids[None], part_a[None]))[0, 0]
    part_of = np.array([0, 0, 0, 1, 1, 0, 0, 2, 2, 2, -1, -1])
    regions = plots.TokenRegions(part_of, np.array([0, 1, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0]),
                                 ((0, 3, 5), (5, 7, 10)))
    fig = plots.render_attention_mask(mask, regions, [str(i) for i in range(12)], tmp_path / "p.png", cell=8)
    got = cells(read_png(fig.path), fig)[:, :, 0, 0]

    def visible(q, k):
        same = segment_ids[q] == segment_ids[k]
        return bool(same and (part_a[k] or k <= q))

    np.testing.assert_array_equal(got, expected_colors(12, part_of, visible))
    assert (got[5:10, 0:5] == rgb(plots.HIDDEN_COLOR)).all()  # example 2 never sees example 1


def test_small_cells_still_map_one_cell_per_token(tmp_path):
    t = 40
    mask = np.asarray(masks.sep_mask(np.array([25]), t))[0, 0]
    part_of = np.array([0] * 25 + [1] * 15)
    regions = plots.TokenRegions(part_of, np.zeros(t, int), ((0, 25, t),))
    fig = plots.render_attention_mask(mask, regions, ["w"] * t, tmp_path / "s.png", cell=5)
    got = cells(read_png(fig.path), fig)[:, :, 0, 0]
    np.testing.assert_array_equal(got, expected_colors(t, part_of, lambda q, k: k < 25 or k <= q))


def test_render_rejects_mismatched_inputs(tmp_path):
    with pytest.raises(ValueError, match="labels"):
        plots.render_attention_mask(np.ones((3, 3), bool), REGIONS, LABELS, tmp_path / "x.png")
    with pytest.raises(ValueError, match=r"\[T, T\]"):
        plots.render_attention_mask(np.ones((3, 4), bool), REGIONS, LABELS, tmp_path / "x.png")


# ------------------------------------------------------------------ curves


def write_metrics(log_dir, lines):
    log_dir.mkdir(parents=True, exist_ok=True)
    (log_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")


def test_read_metrics_last_record_of_a_step_wins_and_skips_broken_lines(tmp_path, caplog):
    lines = [json.dumps({"step": s, "train/loss": 8.0 - s, "train/learning_rate": float("nan")}) for s in (2, 4, 6)]
    lines += [json.dumps({"step": 4, "train/loss": 1.5}), '{"step": 8, "train/lo', json.dumps({"step": 6, "eval/loss": 3.0})]
    write_metrics(tmp_path, lines)
    with caplog.at_level(logging.WARNING):
        series = plots.read_metrics(tmp_path / "metrics.jsonl")
    assert series["train/loss"] == [(2, 6.0), (4, 1.5), (6, 2.0)]  # the resumed run's step 4 replaced the first
    assert series["eval/loss"] == [(6, 3.0)]
    assert "train/learning_rate" not in series  # nan only
    assert "skipped 1 malformed line(s), first at line 5" in caplog.text


def test_plot_metrics_writes_a_png_of_the_expected_size(tmp_path):
    run = tmp_path / "myrun"
    lines = [json.dumps({"step": s, "train/loss": 8 / s, "train/accuracy": s / 20}) for s in range(1, 11)]
    lines += [json.dumps({"step": s, "eval/loss": 9 / s, "eval/accuracy": s / 25, "eval/loss_tokens": 100.0})
              for s in (5, 10)]
    write_metrics(run / "logs", lines)
    out = plots.plot_metrics(run)  # a run directory: finds logs/metrics.jsonl
    assert out == run / "logs" / "loss_curve.png"
    assert out.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(out) as image:
        assert image.size == plots.CURVE_SIZE
    custom = plots.plot_metrics(run / "logs" / "metrics.jsonl", tmp_path / "c.png", title="t")
    assert Image.open(custom).size == plots.CURVE_SIZE


def test_plot_metrics_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="metrics.jsonl"):
        plots.plot_metrics(tmp_path / "nothing")
    write_metrics(tmp_path, [json.dumps({"step": 1, "train/accuracy": 0.5})])
    with pytest.raises(ValueError, match=r"metrics.jsonl has no loss values \(keys: \['train/accuracy'\]\)"):
        plots.plot_metrics(tmp_path)


def test_write_run_curves_never_raises(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        assert plots.write_run_curves(tmp_path / "missing") is None
    assert "could not write the loss curve" in caplog.text
    write_metrics(tmp_path / "logs", [json.dumps({"step": 1, "train/loss": 2.0})])
    assert plots.write_run_curves(tmp_path / "logs") == tmp_path / "logs" / "loss_curve.png"
