"""DataSources: contents, bad-input policy, and ShardInfo disjointness/coverage."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import seqio
import tensorflow as tf
import tensorflow_datasets as tfds

from glm_jax.data import corpus
from glm_jax.data.sources import (
    BadDocumentError,
    EmbeddedCorpusSource,
    JsonLinesSource,
    ShardableSource,
    TextFileSource,
    TfdsTextSource,
)
from glm_jax.data.superglue.sources import SuperGLUESource



def texts(ds: tf.data.Dataset) -> list[str]:
    assert ds.element_spec == {"text": tf.TensorSpec([], tf.string)}
    return [ex["text"].decode() for ex in ds.as_numpy_iterator()]


def write(path: Path, data: bytes | str) -> Path:
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def check_shards(source, split: str, num_shards: int) -> list[list[str]]:
    """Shards of ``split`` are disjoint, cover it, and are balanced within one file."""
    everything = sorted(texts(source.get_dataset(split, shuffle=False)))
    shards = [
        texts(source.get_dataset(split, shuffle=True, seed=7, shard_info=seqio.ShardInfo(i, n)))
        for i, n in enumerate([num_shards] * num_shards)
    ]
    assert sorted(t for shard in shards for t in shard) == everything
    return shards


def test_text_lines(tmp_path):
    path = write(tmp_path / "a.txt", "first doc\n\n   \nsecond  doc \r\nthird")
    src = TextFileSource({"train": str(path)})
    assert src.splits == ("train",)
    assert texts(src.get_dataset("train", shuffle=False)) == ["first doc", "second  doc ", "third"]


def test_text_paragraphs(tmp_path):
    path = write(tmp_path / "a.txt", "\n\npara one\nline two\n\n \n\npara two\r\n\nlast\nend")
    src = TextFileSource({"validation": str(path)}, documents="paragraph")
    got = texts(src.get_dataset("validation", shuffle=False))
    assert got == ["para one\nline two", "para two", "last\nend"]


def test_json_lines(tmp_path):
    lines = [{"text": "Paris is the [MASK] of France.", "id": 1}, {"text": "é ✓"}, {"text": "  "}]
    path = write(tmp_path / "a.jsonl", "\n".join(json.dumps(r) for r in lines) + "\n\n")
    src = JsonLinesSource({"train": str(path)})
    assert texts(src.get_dataset("train", shuffle=False)) == [lines[0]["text"], "é ✓"]
    other = write(tmp_path / "b.jsonl", json.dumps({"content": "x"}) + "\n")
    by_key = JsonLinesSource({"train": str(other)}, text_key="content")
    assert list(by_key.iter_documents("train")) == ["x"]


BAD_JSON = [
    ('{"text": "ok"}\n{"text": "fine"}\n{"text": \n', 3, "invalid JSON"),
    ('{"text": "ok"}\n{"content": "x"}\n', 2, "no 'text' field (fields: ['content'])"),
    ('{"text": "ok"}\n\n{"text": 7}\n', 3, "field 'text' is int, not a string"),
    ('["text"]\n', 1, "expected a JSON object, got list"),
    (b'{"text": "ok"}\n{"text": "\xff"}\n', 2, "not valid UTF-8"),
]


@pytest.mark.parametrize("content, line, reason", BAD_JSON)
def test_bad_json_lines_name_file_and_line(tmp_path, content, line, reason):
    path = write(tmp_path / "bad.jsonl", content)
    src = JsonLinesSource({"train": str(path)})
    with pytest.raises(BadDocumentError) as info:
        list(src.iter_documents("train"))
    assert str(info.value).startswith(f"{path}:{line}: ")
    assert reason in str(info.value)
    assert (info.value.path, info.value.line) == (str(path), line)


def test_a_bad_document_ends_the_tf_data_stream_and_is_recorded(tmp_path):
    path = write(tmp_path / "bad.jsonl", '{"text": "ok"}\nnot json\n{"text": "after"}\n')
    src = JsonLinesSource({"train": str(path)})
    assert src.recorded_error() is None
    # The documents before the bad one, then a clean end (no error inside tf.data)...
    assert texts(src.get_dataset("train", shuffle=False)) == ["ok"]
    # ...with the error kept for the reader of the pipeline (glm_jax.data.CheckedIterator).
    assert str(src.recorded_error()).startswith(f"{path}:2: invalid JSON")
    # A repeated stream ends too, instead of replaying the good prefix forever.
    assert texts(src.get_dataset("train", shuffle=False).repeat()) == []


def test_bad_utf8_in_a_paragraph_names_its_line(tmp_path):
    path = write(tmp_path / "bad.txt", b"ok\n\nfine\nbro\xc3ken\n")
    with pytest.raises(BadDocumentError, match=r"bad\.txt:4: not valid UTF-8 \(byte 3"):
        list(TextFileSource({"train": str(path)}, documents="paragraph").iter_documents("train"))


def test_skip_counts_and_warns(tmp_path, caplog):
    content = '{"text": "a"}\nnope\n{"text": "b"}\n{"x": 1}\n{"text": "c"}\n'
    path = write(tmp_path / "mixed.jsonl", content)
    src = JsonLinesSource({"train": str(path)}, on_error="skip")
    with caplog.at_level(logging.WARNING, logger="glm_jax.data.sources"):
        assert list(src.iter_documents("train")) == ["a", "b", "c"]
    (record,) = [r for r in caplog.records if "skipped" in r.getMessage()]
    message = record.getMessage()
    assert "skipped 2 bad document(s)" in message
    assert f"{path}:2: invalid JSON" in message and f"{path}:4: no 'text' field" in message
    with pytest.raises(ValueError, match="on_error"):
        JsonLinesSource({"train": str(path)}, on_error="ignore")


def test_file_level_errors_name_the_file(tmp_path):
    empty = write(tmp_path / "empty.txt", "")
    with pytest.raises(ValueError, match=f"file is empty: {empty}"):
        TextFileSource({"train": str(empty)}).get_dataset("train")
    blank = write(tmp_path / "blank.jsonl", "\n  \n\n")
    with pytest.raises(ValueError, match=f"no document in {blank}"):
        list(JsonLinesSource({"train": str(blank)}).iter_documents("train"))
    missing = str(tmp_path / "nothing-*.txt")
    with pytest.raises(ValueError, match="no file matches .*nothing-"):
        TextFileSource({"train": missing}).get_dataset("train")
    with pytest.raises(ValueError, match="no split 'validation'"):
        TextFileSource({"train": str(blank)}).get_dataset("validation")


@pytest.mark.parametrize("num_shards", [1, 2, 3, 5])
def test_file_sources_shard_disjointly(tmp_path, num_shards):
    for f in range(3):  # 3 files of 7, 4 and 1 documents
        n = (7, 4, 1)[f]
        lines = "".join(json.dumps({"text": f"f{f}d{j}"}) + "\n" for j in range(n))
        write(tmp_path / f"part-{f}.jsonl", lines)
    src = JsonLinesSource({"train": str(tmp_path / "part-*.jsonl")})
    assert len(src.list_shards("train")) == 3
    shards = check_shards(src, "train", num_shards)
    assert max(map(len, shards)) - min(map(len, shards)) <= 3  # within one per file
    # The shard of a document depends on its file and position only (the rule).
    for i, shard in enumerate(shards):
        for text in shard:
            f, j = int(text[1]), int(text[3:])
            assert (f + j) % num_shards == i


def test_skipping_does_not_move_documents_between_shards(tmp_path):
    good = "".join(json.dumps({"text": f"d{j}"}) + "\n" for j in range(6))
    bad = good.replace('{"text": "d1"}', "broken", 1)
    for name, content in (("good", good), ("bad", bad)):
        write(tmp_path / f"{name}.jsonl", content)
    for i in range(2):
        shard = seqio.ShardInfo(i, 2)
        good_source = JsonLinesSource({"t": str(tmp_path / "good.jsonl")})
        kept = list(good_source.iter_documents("t", shard_info=shard))
        skip = JsonLinesSource({"t": str(tmp_path / "bad.jsonl")}, on_error="skip")
        assert list(skip.iter_documents("t", shard_info=shard)) == [t for t in kept if t != "d1"]


def test_bad_shard_info(tmp_path):
    path = write(tmp_path / "a.txt", "x\n")
    with pytest.raises(ValueError, match="index < num_shards"):
        TextFileSource({"train": str(path)}).get_dataset("train", shard_info=seqio.ShardInfo(2, 2))


@pytest.mark.parametrize(
    "cls", [TextFileSource, JsonLinesSource, EmbeddedCorpusSource, TfdsTextSource, SuperGLUESource]
)
def test_every_source_shares_one_get_dataset(cls):
    assert issubclass(cls, ShardableSource)
    assert cls.get_dataset is ShardableSource.get_dataset  # each source writes only _make_dataset
    assert cls.supports_arbitrary_sharding is ShardableSource.supports_arbitrary_sharding


def test_get_dataset_takes_and_ignores_seqio_only_arguments(tmp_path):
    path = write(tmp_path / "a.txt", "one\ntwo\n")
    ds = TextFileSource({"train": str(path)}).get_dataset(
        "train", shuffle=False, sequence_length={"targets": 4}, use_cached=False, num_epochs=None
    )
    assert texts(ds) == ["one", "two"]


def test_embedded_source(corpus_dir):
    src = EmbeddedCorpusSource(corpus_dir)
    built = corpus.embedded_corpus(corpus_dir)
    assert src.splits == ("train", "validation")
    assert src.num_input_examples("validation") == built.num_documents("validation") == 19
    val = [d.text for d in built.documents("validation")]
    assert texts(src.get_dataset("validation", shuffle=False)) == val
    shards = check_shards(src, "validation", 3)
    assert [len(s) for s in shards] == [7, 6, 6]
    once = texts(src.get_dataset("validation", shuffle=True, seed=3))
    assert once == texts(src.get_dataset("validation", shuffle=True, seed=3)) and once != val
    assert len(texts(src.get_dataset("train", shuffle=False))) == built.num_documents("train")


TINY = "glm_jax_tiny_text:1.0.0"


class GlmJaxTinyText(tfds.core.GeneratorBasedBuilder):
    """A two-file TFDS dataset built locally; stands in for c4 (no network here)."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        features = tfds.features.FeaturesDict({"content": tfds.features.Text(), "n": tf.int64})
        return tfds.core.DatasetInfo(builder=self, features=features)

    def _split_generators(self, dl_manager):
        del dl_manager
        return {"train": self._generate_examples(20), "validation": self._generate_examples(5)}

    def _generate_examples(self, count):
        for i in range(count):
            yield i, {"content": f"document {i}" if i != 3 else " ", "n": i}


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory) -> str:
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    tfds.disable_progress_bar()
    GlmJaxTinyText(data_dir=data_dir).download_and_prepare(
        download_config=tfds.download.DownloadConfig(num_shards=2)
    )
    return data_dir


@pytest.mark.parametrize("num_shards", [2, 3])  # 2: by file; 3 > 2 files: by example
def test_tfds_source(tfds_dir, num_shards):
    src = TfdsTextSource(TINY, text_key="content", tfds_data_dir=tfds_dir, read_only=True)
    assert sorted(src.splits) == ["train", "validation"] and len(src.list_shards("train")) == 2
    everything = texts(src.get_dataset("train", shuffle=False))
    assert sorted(everything) == sorted(f"document {i}" for i in range(20) if i != 3)  # no blank
    shards = check_shards(src, "train", num_shards)
    assert all(shards)


def test_tfds_text_key_must_be_a_string_feature(tfds_dir):
    src = TfdsTextSource(TINY, text_key="n", tfds_data_dir=tfds_dir, read_only=True)
    with pytest.raises(ValueError, match=r"text_key 'n' is not a scalar string feature.*'content'"):
        src.get_dataset("train")


def test_a_file_in_two_splits_is_refused(tmp_path):
    """The docs' old launcher pattern: data/wiki-*.jsonl for training also matched the
    validation file, which was then trained on."""
    write(tmp_path / "wiki-00.jsonl", '{"text": "a"}\n')
    val = write(tmp_path / "wiki-val.jsonl", '{"text": "b"}\n')
    source = JsonLinesSource({"train": str(tmp_path / "wiki-*.jsonl"), "validation": str(val)})
    with pytest.raises(ValueError, match=f"{val} is in split 'train' and in split 'validation'"):
        source.list_shards("train")
    with pytest.raises(ValueError, match="is in split 'validation' and in split 'train'"):
        source.list_shards("validation")
    ok = JsonLinesSource({"train": str(tmp_path / "wiki-0*.jsonl"), "validation": str(val)})
    assert ok.list_shards("train") == [str(tmp_path / "wiki-00.jsonl")]
