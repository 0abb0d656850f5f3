"""Where seq2seq examples come from (glm_jax/data/seq2seq_sources.py): the official
folders, SQuAD JSON for question generation, TFDS rows, and the seqio source's
order and shards."""

import json

import numpy as np
import pytest
import seqio

from glm_jax.data import seq2seq_sources as sources


def squad_file(path, split="dev"):
    data = {"data": [{"title": "t", "paragraphs": [
        {"context": "Paris is the capital of France.", "qas": [
            {"id": "1", "question": "What is the capital of France?",
             "answers": [{"text": "Paris", "answer_start": 0}, {"text": "Paris", "answer_start": 0},
                         {"text": "Paris is", "answer_start": 0}]},
            {"id": "2", "question": "Which country?", "answers": [{"text": "France", "answer_start": 24}]}]}]}]}
    path.write_text(json.dumps(data))
    return path


def test_squad_json_gives_one_example_per_distinct_answer(tmp_path):
    examples = sources.read_squad(squad_file(tmp_path / "dev.json"), "validation")
    assert [(e.guid, e.answer, e.target) for e in examples] == [
        ("validation-0", "Paris", "What is the capital of France?"),
        ("validation-1", "Paris is", "What is the capital of France?"),
        ("validation-2", "France", "Which country?"),
    ]
    assert examples[0].source == "Paris is the capital of France."
    # The test split has no answers upstream: FAKE_ANSWER, as there.
    assert {e.answer for e in sources.read_squad(tmp_path / "dev.json", "test")} == {"FAKE_ANSWER"}
    loader = sources.FolderLoader(tmp_path, "squad")
    assert len(loader("validation")) == 3


def test_squad_errors_name_the_file_and_record(tmp_path):
    bad = tmp_path / "dev.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match=rf"^{bad}: not SQuAD JSON"):
        sources.read_squad(bad, "validation")
    bad.write_text(json.dumps({"data": [{"paragraphs": [{"context": "c", "qas": [{"answers": []}]}]}]}))
    with pytest.raises(ValueError, match=r"data\[0\]\.paragraphs\[0\]\.qas\[0\]: missing field 'question'"):
        sources.read_squad(bad, "validation")
    with pytest.raises(FileNotFoundError, match="train.json does not exist"):
        sources.FolderLoader(tmp_path, "squad")("train")


def test_tfds_rows_map_to_the_same_examples():
    rows = [{"article": b"A story.", "highlights": b"First point .\nSecond point ."}]
    [cnn] = sources.examples_from_tfds_rows("cnn_dm", "train", rows)
    assert (cnn.source, cnn.target) == ("A story.", "First point . [SEP] Second point .")  # ROUGE's sentences
    [org] = sources.examples_from_tfds_rows("cnn_dm_org", "train", rows)
    assert org.target == "First point . Second point ."
    [x] = sources.examples_from_tfds_rows("xsum", "test", [{"document": b"doc", "summary": b"sum"}])
    assert (x.guid, x.source, x.target) == ("test-0", "doc", "sum")
    squad = [{"context": b"ctx", "question": b"q?", "answers": {"text": [b"b", b"a", b"b"]}}]
    assert [e.answer for e in sources.examples_from_tfds_rows("squad_qg", "validation", squad)] == ["a", "b"]


def test_unprepared_tfds_is_one_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="TFDS xsum has no prepared 'train' split"):
        sources.TfdsLoader("xsum", str(tmp_path))("train")


def test_source_order_shuffle_and_shards(tmp_path):
    (tmp_path / "train.source").write_text("".join(f"s{i}\n" for i in range(10)))
    (tmp_path / "train.target").write_text("".join(f"t{i}\n" for i in range(10)))
    source = sources.Seq2SeqSource(sources.FolderLoader(tmp_path, "xsum"))

    def indices(**kw):
        return [int(ex["index"]) for ex in source.get_dataset("train", **kw).as_numpy_iterator()]

    assert indices(shuffle=False) == list(range(10))
    first = indices(shuffle=True, seed=3)
    assert sorted(first) == list(range(10)) and first != list(range(10)) and first == indices(shuffle=True, seed=3)
    parts = [indices(shuffle=True, seed=3, shard_info=seqio.ShardInfo(i, 3)) for i in range(3)]
    assert sorted(np.concatenate(parts).tolist()) == list(range(10)) and parts[0] == first[0::3]
    ex = next(source.get_dataset("train", shuffle=False).as_numpy_iterator())
    assert (ex["source"], ex["target"], ex["guid"]) == (b"s0", b"t0", b"train-0")


def test_yahoo_folder_pairs_texts_with_their_masked_test_lines(tmp_path):
    (tmp_path / "blank").mkdir()
    (tmp_path / "valid.txt").write_text("a _UNK b\nc d e\n")
    (tmp_path / "test.txt").write_text("x y z\nu v w\n")
    (tmp_path / "blank" / "test.maskratio0.3.blank").write_text("x <blank> z\n<blank> v w\n")
    loader = sources.FolderLoader(tmp_path, "blank", 0.3)
    assert [(e.source, e.target) for e in loader("validation")] == [("a [UNK] b", "a [UNK] b"), ("c d e", "c d e")]
    assert [(e.source, e.target) for e in loader("test")] == [("x [MASK] z", "x y z"), ("[MASK] v w", "u v w")]
    with pytest.raises(FileNotFoundError, match=r"blank/test.maskratio0.5.blank does not exist"):
        sources.FolderLoader(tmp_path, "blank", 0.5)("test")
    (tmp_path / "blank" / "test.maskratio0.3.blank").write_text("x <blank> z\nno blank here\n")
    with pytest.raises(ValueError, match=r"test.maskratio0.3.blank:2: no <blank> to fill"):
        loader("test")
    (tmp_path / "blank" / "test.maskratio0.3.blank").write_text("x <blank> z\n")
    with pytest.raises(ValueError, match=r"test.maskratio0.3.blank has 1 lines but .*test.txt has 2"):
        loader("test")
    with pytest.raises(ValueError, match="yahoo_blank has no TFDS dataset"):
        sources.TfdsLoader("yahoo_blank")


def test_tfds_loaders_read_the_builders_real_features():
    """TFDS's own builders (features as TFDS declares them), their data mocked: the
    field names and types glm-jax reads are the ones TFDS gives."""
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=3):
        for task in ("cnn_dm", "cnn_dm_org", "xsum", "gigaword"):
            examples = sources.TfdsLoader(task)("validation")
            assert len(examples) == 3 and all(isinstance(e.source, str) and e.target for e in examples), task
        squad = sources.TfdsLoader("squad_qg")("validation")
        assert squad and all(e.answer and e.target for e in squad)
        assert len({e.guid for e in squad}) == len(squad)
