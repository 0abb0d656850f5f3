"""seqio DataSources of raw documents, each yielding ``{'text': tf.string}``.

* :class:`EmbeddedCorpusSource`: the embedded corpus (``glm_jax/data/corpus.py``); splits
  ``train`` and ``validation``.
* :class:`TextFileSource`: local text files, one document per line or documents
  separated by blank lines.
* :class:`JsonLinesSource`: JSON lines with a ``text`` field, the official GLM
  format (other fields are ignored).
* :class:`TfdsTextSource`: any TFDS dataset with a text feature (``c4/en:3.0.1``).

Sharding. Every source honours ``seqio.ShardInfo(index, num_shards)`` for any
number of shards, and the shards are disjoint and together cover the split. In the
file sources, document ``j`` of file ``f`` (in the order the patterns list them)
belongs to shard ``(f + j) % num_shards``; a shard's documents are decoded and
parsed only on that shard's host, but every host scans the files to count. The
rule depends on a document's own file only, so shuffling the file order (done when
``shuffle=True``, with ``seed``) does not move documents between shards. A
document's number is fixed before it is decoded, so dropping a bad one never
shifts the others. For a corpus too large to scan on every host, use TFDS.

Bad input (policy; tests/test_sources.py checks every case):
  * A pattern that matches no file, or an empty (0-byte) file: ``ValueError``
    naming the pattern or file, when ``get_dataset`` is called.
  * A file holding no document (only blank lines): ``ValueError`` naming the file.
  * A bad document: a line that is not UTF-8; in JSON lines, a line that is not
    valid JSON, not an object, lacks the text field or holds a non-string there.
    ``on_error='raise'`` (default): :class:`BadDocumentError`, a ``ValueError``
    whose message starts ``path:line:``. ``iter_documents`` raises it; the
    tf.data pipeline of ``get_dataset`` instead ends its stream there and records
    the error, which ``recorded_error()`` returns (glm_jax.data.CheckedIterator raises
    it as one line). An exception raised inside tf.data is logged with a
    traceback by every stage it crosses, and the pipeline's iterator then hangs
    the interpreter's exit; ending the stream has neither problem.
    ``on_error='skip'``: the document is dropped and counted, and one warning at
    the end of each pass gives the count and the first few ``path:line: reason``.
  * Documents that are empty or only whitespace (a JSON ``"text": ""``) carry no
    tokens and are dropped silently, in every source.

The file sources read in Python (``tf.data.Dataset.from_generator``): that is what
makes errors precise and JSON parsable. Such pipelines cannot be saved with
``tf.train.Checkpoint``; resume them by skipping, or go through TFDS.
"""

from __future__ import annotations

import abc
import json
import logging
import os
from typing import Iterator, Literal, Mapping, Optional, Sequence, Union

import numpy as np
import seqio
import tensorflow as tf

from glm_jax.data import corpus as corpus_lib

logger = logging.getLogger(__name__)

OnError = Literal["raise", "skip"]
FilePatterns = Union[str, Sequence[str]]
OUTPUT_SIGNATURE = {"text": tf.TensorSpec([], tf.string)}


class BadDocumentError(ValueError):
    """A document that cannot be read; the message starts ``path:line:``."""

    def __init__(self, path: str, line: int, reason: str):
        super().__init__(f"{path}:{line}: {reason}")
        self.path, self.line, self.reason = path, line, reason


def _shard_of(file_index: int, doc_index: int, shard_info: Optional[seqio.ShardInfo]) -> bool:
    """Whether document ``doc_index`` of file ``file_index`` is in this shard."""
    if shard_info is None:
        return True
    return (file_index + doc_index) % shard_info.num_shards == shard_info.index


def check_shard_info(shard_info: Optional[seqio.ShardInfo]) -> None:
    """Raises ValueError unless ``shard_info`` is None or ``0 <= index < num_shards``."""
    if shard_info is not None and not 0 <= shard_info.index < shard_info.num_shards:
        raise ValueError(f"bad {shard_info}: need 0 <= index < num_shards")


def _open(path: str):
    # Local files through Python (fast line iteration); remote ones through gfile.
    return tf.io.gfile.GFile(path, "rb") if "://" in path else open(path, "rb")


def _decode_utf8(path: str, line: int, raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadDocumentError(
            path, line, f"not valid UTF-8 (byte {e.start}: {raw[e.start:e.start + 4]!r})"
        ) from None


class ShardableSource(seqio.DataSource, metaclass=abc.ABCMeta):
    """Base of this package's seqio DataSources: any ``ShardInfo`` works
    (``supports_arbitrary_sharding``), and ``get_dataset`` (seqio's signature)
    checks the shard and calls :meth:`_make_dataset`, the method a subclass writes
    (with ``list_shards``). seqio's ``sequence_length``, ``use_cached`` and
    ``num_epochs`` are accepted and ignored.
    """

    @property
    def supports_arbitrary_sharding(self) -> bool:
        return True

    def get_dataset(
        self,
        split: str = "train",
        shuffle: bool = True,
        seed: Optional[int] = None,
        shard_info: Optional[seqio.ShardInfo] = None,
        *,
        sequence_length: Optional[Mapping[str, int]] = None,  # unused, as in seqio
        use_cached: bool = False,  # unused
        num_epochs: Optional[int] = 1,  # unused
    ) -> tf.data.Dataset:
        """The examples of ``split`` (this shard of them); see :meth:`_make_dataset`.

        Raises:
          ValueError: ``shard_info`` is not ``0 <= index < num_shards``.
        """
        check_shard_info(shard_info)
        return self._make_dataset(split, shuffle=shuffle, seed=seed, shard_info=shard_info)

    @abc.abstractmethod
    def _make_dataset(
        self, split: str, *, shuffle: bool, seed: Optional[int], shard_info: Optional[seqio.ShardInfo]
    ) -> tf.data.Dataset:
        """The dataset of ``split`` for ``get_dataset``; ``shard_info`` is valid or None."""


class _FileDocumentSource(ShardableSource):
    """Documents read from files in Python; subclasses say where documents are."""

    def __init__(self, split_to_filepattern: Mapping[str, FilePatterns], *, on_error: OnError):
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        if not isinstance(split_to_filepattern, Mapping):
            raise ValueError(
                f"split_to_filepattern must map split names to file patterns, e.g. "
                f"{{'train': {split_to_filepattern!r}}}; got {type(split_to_filepattern).__name__}"
            )
        if not split_to_filepattern:
            raise ValueError("split_to_filepattern is empty: give at least one split")
        self._split_to_filepattern = dict(split_to_filepattern)
        self._on_error = on_error
        # Errors that ended a get_dataset stream; the source stays failed (its
        # files are bad), so a repeated or rebuilt pipeline ends at once.
        self._errors: list[ValueError] = []
        super().__init__(splits=self._split_to_filepattern.keys())

    def recorded_error(self) -> Optional[ValueError]:
        """The first error that ended one of this source's pipelines, or None."""
        return self._errors[0] if self._errors else None

    @abc.abstractmethod
    def _units(self, path: str) -> Iterator[tuple[int, list[bytes]]]:
        """(first line number, raw lines) of each non-blank document candidate."""

    @abc.abstractmethod
    def _parse(self, path: str, line: int, lines: list[bytes]) -> str:
        """The text of one candidate; raises :class:`BadDocumentError`."""

    def _patterns(self, split: str) -> list[str]:
        patterns = self._split_to_filepattern[split]
        patterns = [patterns] if isinstance(patterns, (str, os.PathLike)) else list(patterns)
        return list(map(os.fspath, patterns))

    def list_shards(self, split: str) -> Sequence[str]:
        """The split's files, in pattern order (each pattern's matches sorted).

        Raises ValueError for a pattern that matches nothing, an empty file, or a file
        that another split's patterns match too (``data/wiki-*.jsonl`` for training
        would take in ``data/wiki-val.jsonl``: held-out data trained on)."""
        if split not in self._split_to_filepattern:
            raise ValueError(f"{self}: no split {split!r}; have {list(self.splits)}")
        files: list[str] = []
        for pattern in self._patterns(split):
            matches = sorted(tf.io.gfile.glob(pattern))
            if not matches:
                raise ValueError(f"{self}: split {split!r}: no file matches {pattern!r}")
            for path in matches:
                if tf.io.gfile.stat(path).length == 0:
                    raise ValueError(f"{self}: split {split!r}: file is empty: {path}")
            files.extend(matches)
        for other in self._split_to_filepattern:
            if other == split:
                continue
            shared = sorted(set(files) & {m for p in self._patterns(other) for m in tf.io.gfile.glob(p)})
            if shared:
                raise ValueError(f"{self}: {shared[0]} is in split {split!r} and in split {other!r} (a pattern of "
                                 "each matches it): give the splits disjoint patterns")
        return files

    def iter_documents(
        self,
        split: str,
        *,
        shuffle: bool = False,
        seed: Optional[int] = None,
        shard_info: Optional[seqio.ShardInfo] = None,
    ) -> Iterator[str]:
        """The split's documents in Python, as ``get_dataset`` yields them."""
        check_shard_info(shard_info)
        files = list(enumerate(self.list_shards(split)))
        if shuffle:
            files = [files[i] for i in np.random.default_rng(seed).permutation(len(files))]
        skipped: list[BadDocumentError] = []
        for file_index, path in files:
            count = 0
            for count, (line, lines) in enumerate(self._units(path), start=1):
                if not _shard_of(file_index, count - 1, shard_info):
                    continue
                try:
                    text = self._parse(path, line, lines)
                except BadDocumentError as e:
                    if self._on_error == "raise":
                        raise
                    skipped.append(e)
                    continue
                if text.strip():
                    yield text
            if count == 0:
                raise ValueError(f"{self}: split {split!r}: no document in {path}")
        if skipped:
            logger.warning(
                "%s: split %r%s: skipped %d bad document(s); first: %s",
                self,
                split,
                f" shard {shard_info.index}/{shard_info.num_shards}" if shard_info else "",
                len(skipped),
                "; ".join(str(e) for e in skipped[:5]),
            )

    def _make_dataset(
        self, split: str, *, shuffle: bool, seed: Optional[int], shard_info: Optional[seqio.ShardInfo]
    ) -> tf.data.Dataset:
        """Documents of ``split`` as ``{'text': tf.string}``.

        ``shuffle`` permutes the file order (by ``seed``); the task's shuffle
        buffer mixes documents. Argument errors (files, shards) raise here; bad
        documents raise while iterating.
        """
        self.list_shards(split)  # fail now, not at the first element

        errors = self._errors

        def generate():
            if errors:
                return  # an empty epoch also ends a repeat() of this stream
            try:
                for text in self.iter_documents(
                    split, shuffle=shuffle, seed=seed, shard_info=shard_info
                ):
                    yield {"text": text}
            except ValueError as e:  # a bad document, or a file without any
                errors.append(e)

        return tf.data.Dataset.from_generator(generate, output_signature=OUTPUT_SIGNATURE)

    def __str__(self) -> str:
        return f"{type(self).__name__}({self._split_to_filepattern})"

    __repr__ = __str__


def _raw_lines(path: str) -> Iterator[tuple[int, bytes]]:
    """(1-based line number, line without its terminator)."""
    with _open(path) as f:
        for number, raw in enumerate(f, start=1):
            yield number, raw.rstrip(b"\r\n")


class TextFileSource(_FileDocumentSource):
    """Plain UTF-8 text files.

    Args:
      split_to_filepattern: split name -> file path, glob pattern, or a list of them.
      documents: ``'line'``: each non-blank line is a document. ``'paragraph'``:
        documents are runs of lines separated by blank (whitespace-only) lines,
        their lines joined with ``\\n``.
      on_error: ``'raise'`` or ``'skip'`` for a line that is not UTF-8 (module
        docstring).
    """

    def __init__(
        self,
        split_to_filepattern: Mapping[str, FilePatterns],
        *,
        documents: Literal["line", "paragraph"] = "line",
        on_error: OnError = "raise",
    ):
        if documents not in ("line", "paragraph"):
            raise ValueError(f"documents must be 'line' or 'paragraph', got {documents!r}")
        self._documents = documents
        super().__init__(split_to_filepattern, on_error=on_error)

    def _units(self, path: str) -> Iterator[tuple[int, list[bytes]]]:
        if self._documents == "line":
            for number, raw in _raw_lines(path):
                if raw.strip():
                    yield number, [raw]
            return
        start, block = 0, []
        for number, raw in _raw_lines(path):
            if raw.strip():
                start = start or number
                block.append(raw)
            elif block:
                yield start, block
                start, block = 0, []
        if block:
            yield start, block

    def _parse(self, path: str, line: int, lines: list[bytes]) -> str:
        return "\n".join(_decode_utf8(path, line + k, raw) for k, raw in enumerate(lines))

    def __str__(self) -> str:
        return f"TextFileSource({self._split_to_filepattern}, documents={self._documents!r})"


class JsonLinesSource(_FileDocumentSource):
    """JSON lines, one object per line with a string ``text_key`` field.

    Blank lines are skipped. Args as :class:`TextFileSource`, plus ``text_key``.
    """

    def __init__(
        self,
        split_to_filepattern: Mapping[str, FilePatterns],
        *,
        text_key: str = "text",
        on_error: OnError = "raise",
    ):
        self._text_key = text_key
        super().__init__(split_to_filepattern, on_error=on_error)

    def _units(self, path: str) -> Iterator[tuple[int, list[bytes]]]:
        for number, raw in _raw_lines(path):
            if raw.strip():
                yield number, [raw]

    def _parse(self, path: str, line: int, lines: list[bytes]) -> str:
        (raw,) = lines
        try:
            record = json.loads(_decode_utf8(path, line, raw))
        except json.JSONDecodeError as e:
            reason = f"invalid JSON: {e.msg} (column {e.colno})"
            raise BadDocumentError(path, line, reason) from None
        if not isinstance(record, dict):
            raise BadDocumentError(
                path, line, f"expected a JSON object, got {type(record).__name__}"
            )
        if self._text_key not in record:
            raise BadDocumentError(
                path, line, f"no {self._text_key!r} field (fields: {sorted(record)})"
            )
        text = record[self._text_key]
        if not isinstance(text, str):
            raise BadDocumentError(
                path, line, f"field {self._text_key!r} is {type(text).__name__}, not a string"
            )
        return text


class EmbeddedCorpusSource(ShardableSource):
    """The embedded corpus, held in memory (2 MB); splits train and validation.

    Document ``i`` belongs to shard ``i % num_shards``, the rule of the file
    sources for a single file. The corpus is built on first use, not here.

    Args:
      cache_dir: the corpus folder; defaults to ``corpus.embedded_dir()``.
    """

    def __init__(self, cache_dir: Optional[Union[str, os.PathLike]] = None):
        self._cache_dir = cache_dir
        super().__init__(splits=corpus_lib.SPLITS)

    @property
    def corpus(self) -> corpus_lib.EmbeddedCorpus:
        return corpus_lib.embedded_corpus(self._cache_dir)

    def list_shards(self, split: str) -> Sequence[str]:
        return [str(self.corpus.split_file(split))]

    def num_input_examples(self, split: str) -> int:
        return self.corpus.num_documents(split)

    def _make_dataset(
        self, split: str, *, shuffle: bool, seed: Optional[int], shard_info: Optional[seqio.ShardInfo]
    ) -> tf.data.Dataset:
        """The split's documents; ``shuffle`` permutes them all (by ``seed``)."""
        texts = [d.text for d in self.corpus.documents(split)]
        if shard_info is not None:
            texts = texts[shard_info.index :: shard_info.num_shards]
        ds = tf.data.Dataset.from_tensor_slices({"text": tf.constant(texts, tf.string)})
        if shuffle:
            ds = ds.shuffle(max(len(texts), 1), seed=seed)
        return ds

    def __str__(self) -> str:
        return f"EmbeddedCorpusSource({corpus_lib.embedded_dir(self._cache_dir)})"

    __repr__ = __str__


class TfdsTextSource(ShardableSource):
    """A TFDS dataset reduced to ``{'text': ...}`` from its ``text_key`` feature.

    Sharding goes by file through TFDS when the split has at least ``num_shards``
    files, and by example (``Dataset.shard``) otherwise, so any ``ShardInfo``
    works. Needs the dataset prepared in ``tfds_data_dir`` (no network here).

    Args:
      tfds_name: ``name[/config][:version]``, e.g. ``"c4/en:3.0.1"``.
      text_key: the string feature holding the document.
      tfds_data_dir: the TFDS data folder.
      splits: as ``seqio.TfdsDataSource`` (None: every split of the dataset).
      read_only: never let ``get_dataset`` download or prepare.
    """

    def __init__(
        self,
        tfds_name: str,
        *,
        text_key: str = "text",
        tfds_data_dir: Optional[str] = None,
        splits: Optional[Union[Sequence[str], Mapping[str, str]]] = None,
        read_only: bool = False,
    ):
        self._inner = seqio.TfdsDataSource(
            tfds_name, tfds_data_dir=tfds_data_dir, splits=splits, read_only=read_only
        )
        self._text_key = text_key
        super().__init__(splits=())

    @property
    def splits(self) -> Sequence[str]:
        return self._inner.splits

    def list_shards(self, split: str) -> Sequence[str]:
        return self._inner.list_shards(split)

    def num_input_examples(self, split: str) -> Optional[int]:
        return self._inner.num_input_examples(split)

    def _make_dataset(
        self, split: str, *, shuffle: bool, seed: Optional[int], shard_info: Optional[seqio.ShardInfo]
    ) -> tf.data.Dataset:
        by_file = shard_info is None or len(self.list_shards(split)) >= shard_info.num_shards
        if by_file:
            ds = self._inner.get_dataset(split, shuffle=shuffle, seed=seed, shard_info=shard_info)
        else:
            # Sharding by position needs the same order on every host: read the
            # files unshuffled (the task's shuffle buffer still shuffles).
            ds = self._inner.get_dataset(split, shuffle=False, shard_info=None)
            ds = ds.shard(shard_info.num_shards, shard_info.index)
        spec = ds.element_spec
        feature = spec.get(self._text_key) if isinstance(spec, Mapping) else None
        if not (isinstance(feature, tf.TensorSpec) and feature.dtype == tf.string
                and feature.shape.rank == 0):  # fmt: skip
            have = {k: str(v) for k, v in spec.items()} if isinstance(spec, Mapping) else spec
            raise ValueError(
                f"{self}: text_key {self._text_key!r} is not a scalar string feature; "
                f"features: {have}"
            )
        key = self._text_key
        ds = ds.map(lambda ex: {"text": ex[key]}, num_parallel_calls=tf.data.AUTOTUNE)
        return ds.filter(lambda ex: tf.strings.length(tf.strings.strip(ex["text"])) > 0)

    def __str__(self) -> str:
        return f"TfdsTextSource({self._inner.tfds_dataset.name}, text_key={self._text_key!r})"

    __repr__ = __str__
