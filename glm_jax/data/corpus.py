"""The embedded default corpus: English prose that every Python installation holds.

glm-jax carries no third-party text and runs without network, yet its smoke runs,
examples and tests need real language. Every CPython ships two bodies of English
prose: the reference-manual help texts in ``pydoc_data.topics`` and the
docstrings of the standard library. This module extracts them into a cache
folder, splits off a held-out set, and trains a small sentencepiece model on the
training part.

Documents (the boundaries the objectives see as eos):
  * one per pydoc topic (``pydoc:assert``, ...), in sorted topic order: each is a
    self-contained manual section;
  * one per standard-library module (``stdlib:json.decoder``, ...), in sorted
    module order: the module docstring, then every class and function docstring
    in source order, separated by blank lines; inside each docstring every run of
    whitespace is one space (see ``_clean``). A module is the natural unit of
    coherent prose; splitting it per function would yield many one-line
    documents.
  Every ``VALIDATION_EVERY``-th document (index 24, 49, ...) is held out as the
  validation split; the rest is train. The tokenizer sees only train. (Every
  50th would hold out only 9 small documents, 1% of the text; every 25th holds
  19 documents, about 7%, enough for a steady held-out loss.)

Text: inside each docstring or help text every run of whitespace is one space
(``_clean`` says why); a module's docstrings are separated by blank lines.

Determinism: the same Python gives byte-identical files. Modules are never
imported (imports run code and differ by platform); their source files are
parsed with ``ast``. Everything is sorted, and sentencepiece trains on one
thread (two threads give a different model). Skipped: test packages, GUI and
IDE code (``idlelib``, ``tkinter``, ``turtledemo``), ``lib2to3``, ``ensurepip``,
boilerplate codec modules (``encodings``), ``pydoc_data`` (used above), and
anything installed into the stdlib folder (``site-packages``).

Cache layout, in ``<root>/embedded/<python version>/`` where ``<root>`` is
``$GLM_JAX_CACHE`` or ``~/.cache/glm_jax``::

    train.jsonl, validation.jsonl   one {"id": ..., "text": ...} per line
    spm.model                       sentencepiece unigram model, 8000 pieces
    manifest.json                   sizes and sha256 of the above; written last

Files are written to temporary names and renamed, so concurrent builders (many
processes, one cache) never expose a partial file. A missing or mismatching
manifest triggers a rebuild.

Use: ``embedded_corpus()`` (cached or built), ``glm_jax.data.embedded_vocab.EmbeddedVocabulary()`` (the
``GLMVocabulary`` over ``spm.model``, lazy), ``glm_jax.data.sources.EmbeddedCorpusSource``
(the seqio source). Build the cache ahead of time with ``python -m glm_jax.data.corpus``.
"""

from __future__ import annotations

import ast
import hashlib
import io
import json
import logging
import os
import platform
import sysconfig
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Optional, Sequence, Union

import sentencepiece as spm


logger = logging.getLogger(__name__)

#: Bump when extraction or training changes; caches of other versions rebuild.
FORMAT_VERSION = 2  # 2: whitespace normalised to single spaces (see _clean)
#: Every this-many-th document goes to the validation split.
VALIDATION_EVERY = 25
SPLITS = ("train", "validation")
SPM_FILE = "spm.model"
MANIFEST_FILE = "manifest.json"

#: Standard-library folders left out (see the module docstring).
SKIPPED_PACKAGES = frozenset(
    {
        "test", "tests", "idle_test", "idlelib", "tkinter", "turtledemo", "lib2to3",
        "ensurepip", "encodings", "pydoc_data", "site-packages", "dist-packages",
    }
)  # fmt: skip

#: Sentencepiece trainer options. Why each one:
#:  * identity normalization, no whitespace removal, byte fallback: lossless, so
#:    decode(encode(text)) == text for any text; newlines (not in the line-wise
#:    training input) become the byte piece <0x0A>, which ends a sentence.
#:  * pad at id 0 (a control piece, never emitted): seqio pads with 0, and
#:    padding then decodes to nothing instead of to a real token.
#:  * no bos/eos: GLM's eos and other commands follow the pieces (glm_jax/data/vocab.py).
#:  * required_chars: the Chinese/ellipsis sentence ends get pieces of their own,
#:    so the sentence-level objective can see them.
#:  * one thread, no sampling: determinism.
#:  Brackets are ordinary characters here; literal command tokens ("[MASK]") are
#:  split off before text reaches sentencepiece.
SPM_OPTIONS: Mapping[str, Union[str, int, float, bool]] = {
    "model_type": "unigram",
    "vocab_size": 8000,
    "normalization_rule_name": "identity",
    "add_dummy_prefix": True,
    "remove_extra_whitespaces": False,
    "allow_whitespace_only_pieces": True,
    "split_digits": True,
    "byte_fallback": True,
    "character_coverage": 0.9995,
    "required_chars": "。？！；…",
    "pad_id": 0,
    "unk_id": 1,
    "bos_id": -1,
    "eos_id": -1,
    "max_sentence_length": 16384,
    "num_threads": 1,
    "input_sentence_size": 0,
    "shuffle_input_sentence": False,
}


@dataclass(frozen=True)
class Document:
    """One corpus document: a stable name and its text."""

    id: str
    text: str


@dataclass(frozen=True)
class EmbeddedCorpus:
    """A built corpus in its cache folder.

    Attributes:
      directory: the cache folder.
      manifest: the parsed ``manifest.json`` (sizes, hashes, options).
      timings: seconds spent in this process building it (empty when the cache
        was reused): ``extract``, ``train_spm``, ``total``.
    """

    directory: Path
    manifest: Mapping
    timings: Mapping[str, float] = field(default_factory=dict)

    def split_file(self, split: str) -> Path:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r} of the embedded corpus; have {SPLITS}")
        return self.directory / f"{split}.jsonl"

    @property
    def spm_model_file(self) -> Path:
        return self.directory / SPM_FILE

    def num_documents(self, split: str) -> int:
        return int(self.manifest["splits"][split]["documents"])

    def documents(self, split: str) -> list[Document]:
        """The documents of ``split`` (trusted: this module wrote and hashed them)."""
        with open(self.split_file(split), encoding="utf-8") as f:
            return [Document(**json.loads(line)) for line in f]


# ------------------------------------------------------------------ locations


def cache_root() -> Path:
    """``$GLM_JAX_CACHE``, else ``~/.cache/glm_jax``."""
    env = os.environ.get("GLM_JAX_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "glm_jax"


def embedded_dir(cache_dir: Optional[Union[str, os.PathLike]] = None) -> Path:
    """The corpus folder: ``cache_dir`` if given, else ``<cache_root>/embedded/<python>``."""
    if cache_dir is not None:
        return Path(cache_dir)
    return cache_root() / "embedded" / platform.python_version()


# ----------------------------------------------------------------- extraction


def extract_documents(stdlib_dir: Optional[Union[str, os.PathLike]] = None) -> list[Document]:
    """Pydoc topics, then standard-library modules; see the module docstring.

    Args:
      stdlib_dir: the standard-library folder; defaults to this interpreter's.
    """
    import pydoc_data.topics  # a plain dict literal; importing it runs nothing else

    docs = [
        Document(f"pydoc:{name}", _clean(text))
        for name, text in sorted(pydoc_data.topics.topics.items())
    ]
    root = Path(stdlib_dir or sysconfig.get_paths()["stdlib"])
    for module, path in _stdlib_modules(root):
        texts = _module_docstrings(path)
        if texts:
            docs.append(Document(f"stdlib:{module}", "\n\n".join(texts)))
    return [d for d in docs if d.text]


def _stdlib_modules(root: Path) -> list[tuple[str, Path]]:
    """(dotted module name, source path), sorted by name."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        # Package folders are identifiers; this also drops config-3.x-*, lib-dynload.
        dirnames[:] = [d for d in dirnames if d.isidentifier() and d not in SKIPPED_PACKAGES]
        rel = Path(dirpath).relative_to(root).parts
        for name in filenames:
            stem, ext = os.path.splitext(name)
            if ext != ".py" or not stem.isidentifier():
                continue
            parts = rel if stem == "__init__" else (*rel, stem)
            if parts:
                found.append((".".join(parts), Path(dirpath, name)))
    return sorted(found)


_DEFINITIONS = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
# Nodes whose bodies may hold definitions (if/try/with/for/match blocks).
_CONTAINERS = (ast.stmt, ast.excepthandler, ast.match_case)


def _module_docstrings(path: Path) -> list[str]:
    """Module, class and function docstrings of one source file, in source order."""
    try:
        with warnings.catch_warnings():  # e.g. invalid escapes: not our business here
            warnings.simplefilter("ignore")
            tree = ast.parse(path.read_bytes(), filename=str(path))
    except (SyntaxError, ValueError) as e:  # not for this Python's grammar
        logger.warning("embedded corpus: skipping %s (%s)", path, e)
        return []
    out: list[str] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, _DEFINITIONS):
            doc = ast.get_docstring(node, clean=True)
            if doc and _encodable(doc):
                out.append(_clean(doc))
        # Statements only: expressions never hold a docstring, and skipping them
        # makes the walk several times faster than ast.walk.
        for child in ast.iter_child_nodes(node):
            if isinstance(child, _CONTAINERS):
                visit(child)

    visit(tree)
    return [d for d in out if d]


def _clean(text: str) -> str:
    """One line of prose: every run of whitespace becomes one space.

    Docstrings and the manual's help texts are wrapped at ~72 columns and indented
    for layout, so their line breaks and indentation are formatting, not language.
    Kept, the newline is the commonest token (8% of the corpus) and a small model
    learns to fill every blank with it. Documents stay separate (they are the eos
    boundaries the objectives see); code and lists inside them become inline text.
    """
    return " ".join(text.split())


def _encodable(text: str) -> bool:
    # A docstring may spell lone surrogates ("\ud800"), which UTF-8 cannot hold.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def split_documents(docs: Sequence[Document]) -> dict[str, list[Document]]:
    """Every ``VALIDATION_EVERY``-th document (index 24, 49, ...) to validation."""
    out: dict[str, list[Document]] = {"train": [], "validation": []}
    for i, doc in enumerate(docs):
        out["validation" if i % VALIDATION_EVERY == VALIDATION_EVERY - 1 else "train"].append(doc)
    return out


def train_sentencepiece(texts: Iterable[str], **overrides) -> bytes:
    """Trains a sentencepiece model with ``SPM_OPTIONS`` (plus ``overrides``).

    Each non-blank line of each text is one training sentence (sentencepiece
    learns from lines; newlines are left to byte fallback).

    Returns:
      The serialized model.
    """
    lines = [line for text in texts for line in text.split("\n") if line.strip()]
    if not lines:
        raise ValueError("train_sentencepiece: no non-blank lines to train on")
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=model,
        minloglevel=2,
        **{**SPM_OPTIONS, **overrides},
    )
    return model.getvalue()


# ---------------------------------------------------------------------- build


def build_embedded_corpus(
    cache_dir: Optional[Union[str, os.PathLike]] = None,
    *,
    stdlib_dir: Optional[Union[str, os.PathLike]] = None,
) -> EmbeddedCorpus:
    """Extracts, splits and trains into the cache folder, replacing what is there.

    Args:
      cache_dir: the folder to write; defaults to :func:`embedded_dir`.
      stdlib_dir: the standard-library folder; defaults to this interpreter's.
    """
    directory = embedded_dir(cache_dir)
    directory.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    splits = split_documents(extract_documents(stdlib_dir))
    t1 = time.perf_counter()
    model = train_sentencepiece(d.text for d in splits["train"])
    t2 = time.perf_counter()

    manifest: dict = {
        "format_version": FORMAT_VERSION,
        "python": platform.python_version(),
        "validation_every": VALIDATION_EVERY,
        "splits": {},
    }
    for split, docs in splits.items():
        data = "".join(
            json.dumps({"id": d.id, "text": d.text}, ensure_ascii=False) + "\n" for d in docs
        ).encode("utf-8")
        _write_atomic(directory / f"{split}.jsonl", data)
        manifest["splits"][split] = {
            "documents": len(docs),
            "text_bytes": sum(len(d.text.encode("utf-8")) for d in docs),
            "words": sum(len(d.text.split()) for d in docs),
            "sha256": hashlib.sha256(data).hexdigest(),
        }
    _write_atomic(directory / SPM_FILE, model)
    manifest["spm"] = {
        "options": dict(SPM_OPTIONS),
        "sentencepiece_version": spm.__version__,
        "sha256": hashlib.sha256(model).hexdigest(),
    }
    # Written last: its presence marks a complete build.
    _write_atomic(
        directory / MANIFEST_FILE,
        (json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode(),
    )
    timings = {"extract": t1 - t0, "train_spm": t2 - t1, "total": time.perf_counter() - t0}
    logger.info("embedded corpus built in %s: %s", directory, timings)
    return EmbeddedCorpus(directory, manifest, timings)


def embedded_corpus(cache_dir: Optional[Union[str, os.PathLike]] = None) -> EmbeddedCorpus:
    """The cached corpus, built first if missing or stale."""
    directory = embedded_dir(cache_dir)
    manifest = _valid_manifest(directory)
    if manifest is None:
        return build_embedded_corpus(directory)
    return EmbeddedCorpus(directory, manifest)


def _valid_manifest(directory: Path) -> Optional[dict]:
    """The manifest if the cache is complete and matches it, else None."""
    try:
        manifest = json.loads((directory / MANIFEST_FILE).read_text(encoding="utf-8"))
        if manifest.get("format_version") != FORMAT_VERSION:
            return None
        expected = {f"{s}.jsonl": manifest["splits"][s]["sha256"] for s in SPLITS}
        expected[SPM_FILE] = manifest["spm"]["sha256"]
        for name, sha in expected.items():
            if hashlib.sha256((directory / name).read_bytes()).hexdigest() != sha:
                logger.warning("embedded corpus: %s does not match its manifest", directory / name)
                return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return manifest


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a cache may be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv: Optional[Sequence[str]] = None) -> None:
    """``python -m glm_jax.data.corpus [--cache-dir DIR] [--force]``: build, print the manifest."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cache-dir", default=None, help="default: " + str(embedded_dir()))
    parser.add_argument("--force", action="store_true", help="rebuild even if cached")
    args = parser.parse_args(argv)
    if args.force:
        built = build_embedded_corpus(args.cache_dir)
    else:
        built = embedded_corpus(args.cache_dir)
    report = {"directory": str(built.directory), "timings": built.timings, **built.manifest}
    print(json.dumps(report, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
