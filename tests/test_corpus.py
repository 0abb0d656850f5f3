"""The embedded corpus: extraction rules, determinism, size, cache, tokenizer."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import sentencepiece as spm

from glm_jax.data import corpus



@pytest.fixture(scope="session")
def built(corpus_dir) -> corpus.EmbeddedCorpus:
    return corpus.embedded_corpus(corpus_dir)


def test_build_is_deterministic(corpus_dir, tmp_path):
    # Another process with a fixed hash seed: set and dict order must not leak in.
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    cmd = [sys.executable, "-m", "glm_jax.data.corpus", "--cache-dir", str(tmp_path), "--force"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert set(json.loads(done.stdout)["timings"]) == {"extract", "train_spm", "total"}
    names = sorted(p.name for p in corpus_dir.iterdir() if not p.name.startswith("."))
    assert names == ["manifest.json", "spm.model", "train.jsonl", "validation.jsonl"]
    for name in names:
        assert (tmp_path / name).read_bytes() == (corpus_dir / name).read_bytes(), name


def test_size_and_content(built):
    splits = built.manifest["splits"]
    docs = splits["train"]["documents"] + splits["validation"]["documents"]
    text_bytes = splits["train"]["text_bytes"] + splits["validation"]["text_bytes"]
    words = splits["train"]["words"] + splits["validation"]["words"]
    assert docs > 400 and text_bytes > 1_500_000 and words > 250_000
    assert splits["validation"]["documents"] == docs // corpus.VALIDATION_EVERY
    assert splits["validation"]["text_bytes"] > 50_000  # enough for a held-out loss
    all_docs = built.documents("train") + built.documents("validation")
    assert len(all_docs) == docs
    assert sum(len(d.text.encode()) for d in all_docs) == text_bytes
    ids = [d.id for d in all_docs]
    assert len(set(ids)) == len(ids)
    assert all(d.text.strip() == d.text and d.text for d in all_docs)
    assert "pydoc:assert" in ids and "stdlib:json" in ids and "stdlib:collections" in ids
    skipped = ("test", "idlelib", "tkinter", "encodings", "lib2to3", "ensurepip", "turtledemo")
    assert not [i for i in ids if i.startswith(tuple(f"stdlib:{name}" for name in skipped))]
    json_doc = next(d for d in all_docs if d.id == "stdlib:json")
    assert json_doc.text.startswith("JSON (JavaScript Object Notation)")


def test_manifest_records_the_build(built, corpus_dir):
    m = json.loads((corpus_dir / "manifest.json").read_text())
    assert m == built.manifest
    assert m["format_version"] == corpus.FORMAT_VERSION
    assert m["python"] == platform.python_version()
    assert m["spm"]["options"]["vocab_size"] == 8000 and m["spm"]["options"]["num_threads"] == 1


def test_split_rule():
    docs = [corpus.Document(str(i), "x") for i in range(60)]
    split = corpus.split_documents(docs)
    assert [d.id for d in split["validation"]] == ["24", "49"]
    assert len(split["train"]) == 58


def test_sentencepiece_model(built):
    sp = spm.SentencePieceProcessor(model_file=str(built.spm_model_file))
    assert sp.GetPieceSize() == 8000
    assert (sp.IdToPiece(0), sp.IsControl(0)) == ("<pad>", True)
    assert (sp.IdToPiece(1), sp.IsUnknown(1)) == ("<unk>", True)
    assert sp.bos_id() == -1 and sp.eos_id() == -1
    assert [sp.IdToPiece(i) for i in (2, 12, 257)] == ["<0x00>", "<0x0A>", "<0xFF>"]
    for char in "。？！；…":
        assert not sp.IsUnknown(sp.PieceToId(char)), char
    # Held-out compression: English prose at about 3.5 characters per token.
    text = "\n".join(d.text for d in built.documents("validation"))
    ids = sp.EncodeAsIds(text)
    assert 3.0 < len(text) / len(ids) < 4.5
    assert 1 not in ids  # byte fallback: never <unk>
    assert sp.DecodeIds(ids) == text  # lossless


def test_extraction_rules_on_a_fake_stdlib(tmp_path):
    root = tmp_path / "lib"

    def write(rel: str, source: str) -> None:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)

    write("pkg/__init__.py", '"""The package."""\n')
    write(
        "pkg/mod.py",
        '"""Module doc.\n\n    Indented line.   \n"""\n'
        "import sys\n"
        "if sys.platform:\n"
        "    def f():\n"
        '        """In an if block."""\n'
        "try:\n"
        "    pass\n"
        "except ImportError:\n"
        "    class C:\n"
        '        """In a handler."""\n'
        "        async def m(self):\n"
        '            """A lone surrogate \\udc80 cannot be UTF-8: skipped."""\n'
        "        def n(self):\n"
        '            """Nested method."""\n'
        'x = "not a docstring"\n',
    )
    write("aaa.py", "def g():\n    return 1\n")  # no docstring: no document
    write("test/test_x.py", '"""Skipped: a test package."""\n')
    write("tkinter/__init__.py", '"""Skipped: GUI."""\n')
    write("site-packages/third.py", '"""Skipped: not stdlib."""\n')
    write("config-3.11-x86_64/conf.py", '"""Skipped: not a package name."""\n')
    write("broken.py", '"""Never read."""\ndef (:\n')  # not parsable: skipped, logged
    docs = corpus.extract_documents(stdlib_dir=root)
    stdlib = [d for d in docs if d.id.startswith("stdlib:")]
    assert [d.id for d in stdlib] == ["stdlib:pkg", "stdlib:pkg.mod"]
    assert stdlib[0].text == "The package."
    assert stdlib[1].text == (
        "Module doc. Indented line.\n\nIn an if block.\n\nIn a handler.\n\nNested method."
    )
    topics = [d for d in docs if d.id.startswith("pydoc:")]
    assert len(topics) > 50 and [d.id for d in topics] == sorted(d.id for d in topics)


def test_cache_is_reused_and_checked(built, corpus_dir, tmp_path, monkeypatch):
    reused = corpus.embedded_corpus(corpus_dir)
    assert reused.timings == {} and reused.manifest == built.manifest
    copy = tmp_path / "copy"
    shutil.copytree(corpus_dir, copy)
    assert corpus._valid_manifest(copy) == built.manifest
    with open(copy / "train.jsonl", "a") as f:
        f.write('{"id": "x", "text": "tampered"}\n')
    assert corpus._valid_manifest(copy) is None  # so embedded_corpus(copy) would rebuild
    monkeypatch.setenv("GLM_JAX_CACHE", str(tmp_path / "root"))
    assert corpus.embedded_dir() == tmp_path / "root" / "embedded" / platform.python_version()
    assert corpus.embedded_dir(copy) == copy
    with pytest.raises(ValueError, match="unknown split 'test'"):
        built.split_file("test")
