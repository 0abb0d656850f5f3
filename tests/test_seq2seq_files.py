"""The official seq2seq folders (glm_jax/data/seq2seq_files.py): pairing, the
per-dataset detokenisers, and errors that name the file."""

import pytest

from glm_jax.data import seq2seq_files as files


def write(tmp_path, stem, sources, targets):
    (tmp_path / f"{stem}.source").write_bytes(sources)
    (tmp_path / f"{stem}.target").write_bytes(targets)


def test_cnn_dm_pairs_lines_and_undoes_its_escapes(tmp_path):
    write(tmp_path, "val",
          "-LRB- CNN -RRB- He said `` it was n't '' the dog 's .<S_SEP> More \u201cquotes\u201d \u2013 here\n".encode(),
          b"He was n't there . <S_SEP> It 'll rain .\n")
    [(source, target)] = files.read_split(tmp_path, "validation", "cnn_dm")
    assert source == '( CNN ) He said " it wasn\'t " the dog\'s . More "quotes" - here'
    assert target == "He wasn't there . [SEP] It'll rain ."  # a sentence boundary for ROUGE


def test_gigaword_and_plain_datasets(tmp_path):
    write(tmp_path, "train", b"UNK -lrb- a &amp; b -rrb- <unk>\nx\n", b"y\nz\n")
    assert files.read_split(tmp_path, "train", "gigaword")[0] == ("[UNK] ( a & b ) [UNK]", "y")
    assert files.read_split(tmp_path, "train", "xsum") == [("UNK -lrb- a &amp; b -rrb- <unk>", "y"), ("x", "z")]


def test_errors_name_the_files(tmp_path):
    write(tmp_path, "test", b"a\nb\n", b"only one\n")
    with pytest.raises(ValueError, match=rf"^{tmp_path}/test.source has 2 lines but {tmp_path}/test.target has 1"):
        files.read_split(tmp_path, "test", "cnn_dm")
    write(tmp_path, "test", b"a\n\xff\n", b"x\ny\n")
    with pytest.raises(ValueError, match=rf"^{tmp_path}/test.source:2: not valid UTF-8 \(byte 0\)$"):
        files.read_split(tmp_path, "test", "cnn_dm")
    with pytest.raises(FileNotFoundError, match="train.source does not exist"):
        files.read_split(tmp_path / "nowhere", "train", "cnn_dm")
    with pytest.raises(ValueError, match="split 'dev'"):
        files.read_split(tmp_path, "dev", "cnn_dm")
