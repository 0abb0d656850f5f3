"""The official seq2seq data folders: ``{train,val,test}.source`` / ``.target`` line files.

The layout the official GLM scripts read for CNN/DailyMail, Gigaword and the
question-generation data (``tasks/seq2seq/dataset.SummmaryProcessor``): one example
per line, the n-th line of ``<split>.source`` paired with the n-th of
``<split>.target``. Each line is stripped, its typographic quotes and dashes are
made ASCII (``punctuation_standardization``), and the per-dataset detokeniser
undoes the datasets' PTB escapes:

* ``cnn_dm``: ``-LRB-`` ... back to brackets, ``''``/``````/``` ` ``` back to quotes,
  `` n't``/`` 's``/`` 'd``/`` 'll`` re-attached; ``<S_SEP>`` becomes ``[SEP]`` in a
  target (a sentence boundary for ROUGE) and is dropped from a source;
* ``gigaword``: ``UNK``/``<unk>`` become ``[UNK]``, ``-lrb-`` ... and HTML escapes back;
* anything else (``cnn_dm_org``, ``xsum``, ``squad_qg``): as read.

Errors name the file and the line (not UTF-8) or both files (line counts differ).
"""

from __future__ import annotations

from pathlib import Path
from typing import Union

from glm_jax.data.text_files import numbered_lines

PathLike = Union[str, Path]

#: glm-jax split names -> the official file stems.
SPLIT_FILES = {"train": "train", "validation": "val", "test": "test"}

_QUOTES = {"\u201c": '"', "\u201d": '"', "\u2019": "'", "\u2018": "'", "\u2013": "-"}
_CNNDM_BRACKETS = {"(": "-LRB-", ")": "-RRB-", "[": "-LSB-", "]": "-RSB-", "{": "-LCB-", "}": "-RCB-"}
_GIGAWORD_ESCAPES = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-",
                     "&": "&amp;", "<": "&lt;", ">": "&gt;"}


def standardize_punctuation(text: str) -> str:
    """Typographic double/single quotes and the en dash as ASCII (upstream's
    ``punctuation_standardization``)."""
    for old, new in _QUOTES.items():
        text = text.replace(old, new)
    return text


def detokenize(text: str, dataset: str, *, is_target: bool) -> str:
    """Undo ``dataset``'s escapes (module docstring), in upstream's order."""
    if dataset == "cnn_dm":
        text = text.replace("<S_SEP>", "[SEP]" if is_target else "")
        for plain, escaped in _CNNDM_BRACKETS.items():
            text = text.replace(escaped, plain)
        for old, new in (("''", '"'), ("``", '"'), ("`", "'"), (" n't", "n't"), (" 's", "'s"), (" 'd", "'d"),
                         (" 'll", "'ll")):
            text = text.replace(old, new)
    elif dataset == "gigaword":
        text = text.replace("UNK", "[UNK]").replace("<unk>", "[UNK]")
        for plain, escaped in _GIGAWORD_ESCAPES.items():
            text = text.replace(escaped, plain)
    return text


def _read_lines(path: Path, dataset: str, *, is_target: bool) -> list[str]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    return [detokenize(standardize_punctuation(line), dataset, is_target=is_target)
            for _, line in numbered_lines(path)]


def read_split(data_dir: PathLike, split: str, dataset: str) -> list[tuple[str, str]]:
    """``(source, target)`` pairs of ``split`` (train, validation or test) in the
    official folder ``data_dir``.

    Raises:
      ValueError: an unknown split, a line that is not UTF-8 (file:line), or files
        of different lengths (both named).
      FileNotFoundError: a missing file (named).
    """
    if split not in SPLIT_FILES:
        raise ValueError(f"split {split!r}: expected one of {sorted(SPLIT_FILES)}")
    stem = Path(data_dir) / SPLIT_FILES[split]
    source_path, target_path = stem.with_suffix(".source"), stem.with_suffix(".target")
    sources = _read_lines(source_path, dataset, is_target=False)
    targets = _read_lines(target_path, dataset, is_target=True)
    if len(sources) != len(targets):
        raise ValueError(f"{source_path} has {len(sources)} lines but {target_path} has {len(targets)}: "
                         "the n-th lines of the two files make one example")
    return list(zip(sources, targets))
