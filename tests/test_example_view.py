"""glm_jax/data/example_view.py: rows of registered tasks as text and attention-mask
pictures; and ``glm-jax show-example`` (glm_jax/cli/show_example.py), which prints them."""

import argparse
import io

import numpy as np
import pytest
from PIL import Image

from glm_jax import plots
from glm_jax.cli import show_example as show_example_command
from glm_jax.command_tokens import CommandTokens
from glm_jax.data import example_view
from glm_jax.data.example_view import ExampleRow, Segment, Span

CLS, MASK, SOP, EOP, PAD = 1, 2, 3, 4, 0


class FakeVocab:
    """Command ids 0-7, word ``wN`` for id N >= 10; decodes like the GLM vocabulary."""

    command_tokens = CommandTokens(pad=0, eos=0, cls=1, mask=2, sop=3, eop=4, unk=5, smask=6, gmask=7)
    _literals = {1: "[CLS]", 2: "[MASK]", 3: "<|startofpiece|>", 4: "<|endofpiece|>", 5: "[UNK]"}

    def decode(self, ids):
        return " ".join(self._literals.get(i, f"w{i}") for i in ids if i != 0)


def unpacked_row() -> ExampleRow:
    # Part A: [CLS] w10 [MASK] w11 [MASK] w12 (sep 6); span 1 = [sop] w20 w21 fills 2,
    # span 2 = [sop] w22 fills 4; two padding tokens.
    return ExampleRow(
        tokens=np.array([CLS, 10, MASK, 11, MASK, 12, SOP, 20, 21, SOP, 22, PAD, PAD]),
        targets=np.array([CLS, 10, MASK, 11, MASK, 12, 20, 21, EOP, 22, EOP, 0, 0]),
        loss_mask=np.array([0] * 6 + [1] * 5 + [0, 0]),
        position_ids=np.array([0, 1, 2, 3, 4, 5, 2, 2, 2, 4, 4, 0, 0]),
        block_position_ids=np.array([0] * 6 + [1, 2, 3, 1, 2, 0, 0]),
        sep=6,
    )


def packed_row() -> ExampleRow:
    # Example 1: [CLS] [MASK] w10 | [sop] w20; example 2: [CLS] w11 [MASK] | [sop] w21 w22; padding.
    return ExampleRow(
        tokens=np.array([CLS, MASK, 10, SOP, 20, CLS, 11, MASK, SOP, 21, 22, PAD]),
        targets=np.array([0, 0, 0, 20, EOP, 0, 0, 0, 21, 22, EOP, 0]),
        loss_mask=np.array([0, 0, 0, 1, 1, 0, 0, 0, 1, 1, 1, 0]),
        position_ids=np.array([0, 1, 2, 1, 1, 0, 1, 2, 2, 2, 2, 0]),
        block_position_ids=np.array([0, 0, 0, 1, 2, 0, 0, 0, 1, 2, 3, 0]),
        segment_ids=np.array([1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 0]),
        part_a=np.array([1, 1, 1, 0, 0, 1, 1, 1, 0, 0, 0, 0], bool),
    )


def test_segments_spans_and_padding_of_an_unpacked_row():
    row = unpacked_row()
    assert example_view.segments_of(row) == (Segment(0, 6, 11, (Span(6, 9, 2), Span(9, 11, 4))),)
    regions = example_view.token_regions(row, example_view.segments_of(row))
    np.testing.assert_array_equal(regions.span, [0, 0, 0, 0, 0, 0, 1, 1, 1, 2, 2, -1, -1])
    np.testing.assert_array_equal(regions.blank_of, [0, 0, 1, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0])
    q, k = np.indices((13, 13))
    np.testing.assert_array_equal(row.attention_mask(), (k < 6) | (k <= q))


def test_segments_of_a_packed_row_and_its_mask():
    row = packed_row()
    assert example_view.segments_of(row) == (
        Segment(0, 3, 5, (Span(3, 5, 1),)),
        Segment(5, 8, 11, (Span(8, 11, 7),)),  # position 2 of example 2 is index 5 + 2
    )
    q, k = np.indices((12, 12))
    same = row.segment_ids[q] == row.segment_ids[k]
    np.testing.assert_array_equal(row.attention_mask(), same & (row.part_a[k] | (k <= q)))


def test_example_row_checks_its_form():
    row = unpacked_row()
    with pytest.raises(ValueError, match="either sep"):
        ExampleRow(row.tokens, row.targets, row.loss_mask, row.position_ids, row.block_position_ids)
    with pytest.raises(ValueError, match=r"ExampleRow.loss_mask has shape \(3,\)"):
        ExampleRow(row.tokens, row.targets, row.loss_mask[:3], row.position_ids, row.block_position_ids, sep=6)


def test_text_shows_parts_spans_and_table():
    text = example_view.format_example(unpacked_row(), FakeVocab(), "header line")
    assert text.startswith("header line\nT = 13 tokens: 1 example(s), 2 padding")
    assert "Part A, 6 tokens, bidirectional" in text
    assert "  [CLS] w10 [MASK] w11 [MASK] w12\n" in text
    assert "Part B, 5 tokens in 2 span(s)" in text
    assert "  span 1 (fills the [MASK] at 2): [sop] w20 w21\n" in text
    assert "  span 2 (fills the [MASK] at 4): [sop] w22\n" in text
    assert "Part A with the spans put back:\n  [CLS] w10 ⟦w20 w21⟧ w11 ⟦w22⟧ w12\n" in text
    table = text[text.index("  idx") :].splitlines()
    assert table[0].split() == ["idx", "part", "token", "pos", "block", "loss", "target"]
    assert table[8].split() == ["7", "B1", "w20", "2", "2", "1", "w21"]  # idx 7: predicts w21
    assert table[9].split() == ["8", "B1", "w21", "2", "3", "1", "[eop]"]
    assert table[12] == "   11  ... 2 padding token(s), idx 11-12"


def test_text_of_a_packed_row_names_each_example():
    text = example_view.format_example(packed_row(), FakeVocab())
    assert "example 1 (tokens 0-4): Part A, 3 tokens" in text
    assert "example 2 (tokens 5-10): Part A, 3 tokens" in text
    assert "span 2 (fills the [MASK] at 7): [sop] w21 w22" in text
    assert "[CLS] w11 ⟦w21 w22⟧" in text
    table = text[text.index("  idx") :].splitlines()
    assert table[9].split() == ["8", "2", "B2", "[sop]", "2", "1", "1", "w21"]


def test_render_example_draws_the_rows_mask(tmp_path):
    row = packed_row()
    fig = example_view.render_example(row, FakeVocab(), tmp_path / "p.png", cell=10)
    with Image.open(fig.path) as image:
        pixels = np.asarray(image.convert("RGB"))
    assert pixels.shape == (fig.height, fig.width, 3)
    hidden = plots.hex_to_rgb(plots.HIDDEN_COLOR)
    for q in range(12):
        for k in range(12):
            r, c = fig.cell_center(q, k)
            assert (tuple(pixels[r, c]) == hidden) == (not row.attention_mask()[q, k]), (q, k)


def test_picture_leaves_out_long_trailing_padding(tmp_path):
    row = unpacked_row()
    n = 30  # 11 real tokens + 19 padding
    long = ExampleRow(*(np.pad(getattr(row, f), (0, n - 13)) for f in
                        ("tokens", "targets", "loss_mask", "position_ids", "block_position_ids")), sep=6)
    fig = example_view.render_example(long, FakeVocab(), tmp_path / "l.png", cell=6)
    assert fig.length == 11 + 4  # four padding tokens kept
    np.testing.assert_array_equal(long.head(15).attention_mask(), long.attention_mask()[:15, :15])
    assert example_view.render_example(row, FakeVocab(), tmp_path / "s.png", cell=6).length == 13


# ------------------------------------------------------------- registered tasks


@pytest.fixture(scope="module")
def embedded_row(corpus_dir):
    return example_view.load_example("glm_pretrain_token_embedded", split="validation", index=1, seq_len=32)


def test_pretraining_row_through_the_feature_converter(embedded_row):
    row, vocab = embedded_row
    ct = vocab.command_tokens
    assert row.length == 32 and row.sep is not None and row.segment_ids is None
    (segment,) = example_view.segments_of(row)
    assert segment.sep == row.sep and segment.spans
    np.testing.assert_array_equal(row.position_ids[: row.sep], np.arange(row.sep))
    np.testing.assert_array_equal(row.loss_mask, np.arange(32) >= row.sep)
    for span in segment.spans:
        assert row.tokens[span.start] == ct.sop and row.tokens[span.blank] in ct.mask_ids()
        # The span's tokens after [sop] are what it predicts, closed by [eop].
        np.testing.assert_array_equal(row.tokens[span.start + 1 : span.end], row.targets[span.start : span.end - 1])
        assert row.targets[span.end - 1] == ct.eop
    text = example_view.format_example(row, vocab)
    assert f"{len(segment.spans)} span(s)" in text and "⟦" in text


def register(name, examples, output_features):
    import seqio
    import tensorflow as tf

    signature = {k: tf.TensorSpec(np.shape(v), tf.int32) for k, v in examples[0].items()}

    def dataset_fn(split, shuffle_files, seed=None):
        return tf.data.Dataset.from_generator(lambda: iter(examples), output_signature={
            k: tf.TensorSpec([None] * len(s.shape) if s.shape.rank else [], tf.int32) for k, s in signature.items()
        })

    if name in seqio.TaskRegistry.names():
        seqio.TaskRegistry.remove(name)
    seqio.TaskRegistry.add(name, source=seqio.FunctionDataSource(dataset_fn, splits=["train"]),
                           output_features=output_features)
    return name


@pytest.fixture(scope="module")
def test_tasks(corpus_dir):
    import seqio

    from glm_jax.data.embedded_vocab import EmbeddedVocabulary

    vocab = EmbeddedVocabulary()
    ct = vocab.command_tokens

    def pretrain_example(n_a, word):
        part_a = [ct.cls, word, ct.mask] + [word + 1] * (n_a - 3)
        tokens = part_a + [ct.sop, word + 2]
        return {
            "tokens": tokens, "targets": part_a + [word + 2, ct.eop], "loss_mask": [0] * n_a + [1, 1],
            "position_ids": list(range(n_a)) + [2, 2], "block_position_ids": [0] * n_a + [1, 2], "sep": n_a,
        }

    pretrain = [pretrain_example(n, 100 + n) for n in (6, 8, 7, 9)]  # 8 + 10 + 9 + 11 tokens
    cloze_rows = {
        "tokens": [[ct.cls, 200, ct.mask, ct.eos, ct.sop, 300 + c, ct.pad] for c in range(3)],
        "position_ids": [[0, 1, 2, 3, 2, 2, 0]] * 3, "block_position_ids": [[0, 0, 0, 0, 1, 2, 0]] * 3,
        "targets": [[0, 0, 0, 0, 300 + c, ct.eop, 0] for c in range(3)], "loss_mask": [[0, 0, 0, 0, 1, 1, 0]] * 3,
        "sep": [4, 4, 4], "label": [1],
    }
    features = {"targets": seqio.Feature(vocab, add_eos=False)}
    names = [
        register("show_example_test_pretrain", pretrain, features),
        register("show_example_test_cloze", [cloze_rows],
                 {"tokens": seqio.Feature(vocab, add_eos=False, rank=2)}),
        register("show_example_test_text", [{"targets": [5, 6, 7]}], features),
    ]
    yield vocab
    for name in names:
        seqio.TaskRegistry.remove(name)


def test_packed_rows_of_a_task(test_tasks):
    row, _ = example_view.load_example("show_example_test_pretrain", seq_len=32, pack=True)
    assert row.sep is None
    segments = example_view.segments_of(row)
    assert len(segments) == 3  # 8 + 10 + 9 tokens fit in 32; the 11-token example waits
    for seg in segments:
        (span,) = seg.spans
        assert span.blank == seg.start + 2 and row.tokens[span.blank] == test_tasks.command_tokens.mask
    q, k = np.indices((32, 32))
    same = (row.segment_ids[q] == row.segment_ids[k]) & (row.segment_ids[q] > 0)
    mask = row.attention_mask()
    np.testing.assert_array_equal(mask[same], (row.part_a[k] | (k <= q))[same])  # GLM inside an example
    assert not (mask & ~same & (row.segment_ids[q] > 0)).any()  # nothing across examples


def test_cloze_rows_pick_a_candidate(test_tasks):
    row, _ = example_view.load_example("show_example_test_cloze", candidate=2)
    assert row.sep == 4 and row.tokens[5] == 302
    (seg,) = example_view.segments_of(row)
    assert seg == Segment(0, 4, 6, (Span(4, 6, 2),))  # the trailing pad is padding
    with pytest.raises(ValueError, match="has 3 candidates; --candidate 3 is too large"):
        example_view.load_example("show_example_test_cloze", candidate=3)
    with pytest.raises(ValueError, match="--pack needs pretraining-style examples"):
        example_view.load_example("show_example_test_cloze", pack=True)


def test_errors_name_what_is_wrong(test_tasks):
    with pytest.raises(ValueError, match=r"unknown task 'nope'; registered GLM tasks: .*glm_pretrain_token_embedded"):
        example_view.load_example("nope")
    with pytest.raises(ValueError, match=r"show_example_test_text gives features \['targets'\]; show-example needs"):
        example_view.load_example("show_example_test_text")
    with pytest.raises(ValueError, match="has no split 'validation'; it has train"):
        example_view.load_example("show_example_test_pretrain", split="validation")
    with pytest.raises(ValueError, match="has no example 5 "):
        example_view.load_example("show_example_test_pretrain", index=5)


def test_cli_prints_text_and_writes_the_picture(test_tasks, tmp_path):
    parser = show_example_command.add_arguments(argparse.ArgumentParser())
    out = io.StringIO()
    args = parser.parse_args(["--task", "show_example_test_pretrain", "--index", "1", "--seq-len", "16",
                              "--out", str(tmp_path / "ex.png")])
    assert show_example_command.run(args, out) == 0
    text = out.getvalue()
    assert text.startswith("show_example_test_pretrain, split train, row 1\nT = 16 tokens: 1 example(s), 6 padding")
    assert "span 1 (fills the [MASK] at 2): [sop]" in text
    assert f"attention mask written to {tmp_path / 'ex.png'}" in text
    with Image.open(tmp_path / "ex.png") as image:
        assert image.format == "PNG" and image.size[0] > 16 * 18


def test_a_text_cap_lets_short_examples_share_a_packed_row(corpus_dir):
    """What `glm-jax show-example --pack --text-length 40` shows (docs/cli.md)."""
    row, _ = example_view.load_example("glm_pretrain_token_embedded", seq_len=128, pack=True, text_length=40)
    assert int(row.segment_ids.max()) == 3  # three examples of <= 40 + 2k tokens in 128
    with pytest.raises(ValueError, match="text_length must be in 8..seq_len"):
        example_view.load_example("glm_pretrain_token_embedded", seq_len=64, text_length=100)
