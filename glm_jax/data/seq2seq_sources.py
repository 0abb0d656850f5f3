"""seqio DataSources of conditional-generation examples: official folders or TFDS.

Each task of spec 4.4 reads its examples from one of two places, with the same
:class:`Seq2SeqExample` coming out:

* a folder in the official layout: ``{train,val,test}.source`` / ``.target`` line
  files for the summarisation tasks (glm_jax/data/seq2seq_files.py, with the
  per-dataset detokenisers), and SQuAD v1.1 JSON (``train.json``, ``dev.json``,
  ``test.json``) for question generation, read as upstream's
  ``SQuADGenerationProcessor`` does: one example per distinct answer text of each
  question (sorted here; upstream iterates a Python set, whose order varies
  between runs), the test split with the answer ``FAKE_ANSWER`` (as upstream);
  and for Yahoo infilling upstream's ``{train,valid,test}.txt`` texts (the source
  is the text itself, masked when the row is built) with the test split's masked
  texts in ``blank/test.maskratio{r:.1f}.blank``, line for line;
* TFDS (prepared already; nothing is downloaded): ``cnn_dailymail`` (article ->
  highlights), ``xsum`` (document -> summary), ``gigaword`` (document ->
  summary), ``squad`` (context, question, answers). The TFDS CNN/DailyMail
  highlights hold one sentence per line: for ``cnn_dm`` the lines are joined with
  `` [SEP] `` (the sentence boundary that the official ``<S_SEP>`` files give and
  ROUGE splits on), for ``cnn_dm_org`` with a space.

:class:`Seq2SeqSource` holds a task's examples per split in memory (read on first
use), and yields them with their index in the split (the ``example_id`` of the
batches) in file order or a seeded permutation, sharded as every source of this
package is (``ShardInfo(i, n)`` keeps positions ``i, i + n, ...``), each with a
``seed`` for the randomness of its row (Yahoo's masks).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Union

import numpy as np
import tensorflow as tf

from glm_jax.data import blank_infilling, seq2seq_files
from glm_jax.data.text_files import numbered_lines
from glm_jax.data.split_data import InMemorySource, SPLITS

SQUAD_FILES = {"train": "train.json", "validation": "dev.json", "test": "test.json"}
BLANK_FILES = {"train": "train.txt", "validation": "valid.txt", "test": "test.txt"}
TEST_ANSWER = "FAKE_ANSWER"  # upstream's answer for the unlabelled test split


@dataclasses.dataclass(frozen=True)
class Seq2SeqExample:
    """One conditional-generation example.

    Attributes:
      guid: ``{split}-{index}``.
      source: the article (summarisation) or the passage (question generation).
      target: the summary or the question.
      answer: question generation only: the answer the question asks for.
    """

    guid: str
    source: str
    target: str
    answer: str = ""


Loader = Callable[[str], list[Seq2SeqExample]]


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split {split!r}: expected one of {SPLITS}")


class FolderLoader:
    """A task's splits from a folder in the official layout (module docstring).

    Args:
      data_dir: the folder.
      dataset: the detokeniser of seq2seq_files (``cnn_dm``, ``gigaword``, ...),
        ``squad`` for the SQuAD JSON files, or ``blank`` for the Yahoo texts.
      mask_ratio: ``blank`` only: which ``test.maskratio{r}.blank`` file the test split reads.
    """

    def __init__(self, data_dir: Union[str, Path], dataset: str, mask_ratio: float = 0.1):
        self.data_dir, self.dataset, self.mask_ratio = Path(data_dir), dataset, mask_ratio

    def __call__(self, split: str) -> list[Seq2SeqExample]:
        _check_split(split)
        if self.dataset == "squad":
            return read_squad(self.data_dir / SQUAD_FILES[split], split)
        if self.dataset == "blank":
            return read_blank(self.data_dir, split, self.mask_ratio)
        pairs = seq2seq_files.read_split(self.data_dir, split, self.dataset)
        return [Seq2SeqExample(f"{split}-{i}", source, target) for i, (source, target) in enumerate(pairs)]

    def __str__(self) -> str:
        return str(self.data_dir)


def read_squad(path: Path, split: str) -> list[Seq2SeqExample]:
    """Question-generation examples of a SQuAD v1.1 JSON file (module docstring).

    Raises:
      FileNotFoundError: a missing file; ValueError: not JSON, or a record without
        the SQuAD fields (the file and the record's place named).
    """
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        articles = json.loads(path.read_text(encoding="utf-8"))["data"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: not SQuAD JSON with a 'data' list ({type(e).__name__}: {e})") from None
    out: list[Seq2SeqExample] = []
    for a, article in enumerate(articles):
        for p, paragraph in enumerate(article.get("paragraphs", [])):
            for q, qa in enumerate(paragraph.get("qas", [])):
                where = f"{path}: data[{a}].paragraphs[{p}].qas[{q}]"
                try:
                    context, question = paragraph["context"], qa["question"]
                    answers = sorted({ans["text"] for ans in qa["answers"]}) if split != "test" else [TEST_ANSWER]
                except (KeyError, TypeError) as e:
                    raise ValueError(f"{where}: missing field {e}") from None
                if not answers:
                    raise ValueError(f"{where}: no answers")
                start = len(out)
                out.extend([Seq2SeqExample(f"{split}-{start + i}", context, question, answer)
                            for i, answer in enumerate(answers)])
    return out


def _lines(path: Path) -> list[str]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    return [blank_infilling.detokenize(line) for _, line in numbered_lines(path)]


def read_blank(data_dir: Path, split: str, mask_ratio: float) -> list[Seq2SeqExample]:
    """Yahoo infilling examples: the texts are the targets; a test example's source is
    its masked line of ``blank/test.maskratio{mask_ratio:.1f}.blank``, the others'
    the text itself (masked when the row is built)."""
    texts = _lines(data_dir / BLANK_FILES[split])
    sources = texts
    if split == "test":
        blank = data_dir / "blank" / f"test.maskratio{mask_ratio:.1f}.blank"
        sources = _lines(blank)
        if len(sources) != len(texts):
            raise ValueError(f"{blank} has {len(sources)} lines but {data_dir / BLANK_FILES[split]} has "
                             f"{len(texts)}: the n-th lines make one example")
        for number, source in enumerate(sources, 1):
            if blank_infilling.MASK_TEXT not in source:
                raise ValueError(f"{blank}:{number}: no <blank> to fill")
    return [Seq2SeqExample(f"{split}-{i}", source, text) for i, (source, text) in enumerate(zip(sources, texts))]


#: TFDS dataset and fields of each task: (name, source field, target field).
TFDS_FIELDS: Mapping[str, tuple[str, str, str]] = {
    "cnn_dm": ("cnn_dailymail", "article", "highlights"),
    "cnn_dm_org": ("cnn_dailymail", "article", "highlights"),
    "xsum": ("xsum", "document", "summary"),
    "gigaword": ("gigaword", "document", "summary"),
    "squad_qg": ("squad", "context", "question"),
}


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def examples_from_tfds_rows(task: str, split: str, rows: Iterable[Mapping[str, Any]]) -> list[Seq2SeqExample]:
    """``task``'s examples from TFDS rows (numpy values, as ``tfds.as_numpy`` gives
    them): the field mapping of :data:`TFDS_FIELDS`, the highlights' sentence
    joins, and one SQuAD example per distinct answer."""
    _, source_key, target_key = TFDS_FIELDS[task]
    out: list[Seq2SeqExample] = []
    for row in rows:
        source, target = _text(row[source_key]), _text(row[target_key])
        if task in ("cnn_dm", "cnn_dm_org"):
            sentences = [s.strip() for s in target.split("\n") if s.strip()]
            target = (" [SEP] " if task == "cnn_dm" else " ").join(sentences)
        if task == "squad_qg":
            answers = sorted({_text(t) for t in row["answers"]["text"]}) if split != "test" else [TEST_ANSWER]
            start = len(out)
            out.extend([Seq2SeqExample(f"{split}-{start + i}", source, target, answer)
                        for i, answer in enumerate(answers)])
        else:
            out.append(Seq2SeqExample(f"{split}-{len(out)}", source, target))
    return out


class TfdsLoader:
    """A task's splits from TFDS (:data:`TFDS_FIELDS`), prepared in ``tfds_data_dir``."""

    def __init__(self, task: str, tfds_data_dir: Optional[str] = None):
        if task not in TFDS_FIELDS:
            raise ValueError(f"{task} has no TFDS dataset: give a folder in the official layout (--data-dir)")
        self.task = task
        self.tfds_name = TFDS_FIELDS[task][0]
        self.tfds_data_dir = tfds_data_dir

    def __call__(self, split: str) -> list[Seq2SeqExample]:
        _check_split(split)
        # Imported here: TFDS is slow to import and only this loader needs it.
        import tensorflow_datasets as tfds

        builder = tfds.builder(self.tfds_name, data_dir=self.tfds_data_dir)
        try:
            ds = builder.as_dataset(split=split, shuffle_files=False)
        except (AssertionError, ValueError, KeyError) as e:  # unprepared, or no such split
            raise FileNotFoundError(
                f"TFDS {self.tfds_name} has no prepared {split!r} split in {builder.data_dir!r} ({e}). Prepare it "
                "with network access (tfds.builder(...).download_and_prepare()), pass tfds_data_dir, or use a "
                "folder in the official layout (--data-dir)") from None
        return examples_from_tfds_rows(self.task, split, tfds.as_numpy(ds))

    def __str__(self) -> str:
        return f"tfds:{self.tfds_name}" + (f"@{self.tfds_data_dir}" if self.tfds_data_dir else "")


OUTPUT_SIGNATURE = {
    "index": tf.TensorSpec([], tf.int32),
    "guid": tf.TensorSpec([], tf.string),
    "source": tf.TensorSpec([], tf.string),
    "target": tf.TensorSpec([], tf.string),
    "answer": tf.TensorSpec([], tf.string),
    "seed": tf.TensorSpec([], tf.int64),
}


class Seq2SeqSource(InMemorySource):
    """One task's examples (module docstring); features as :data:`OUTPUT_SIGNATURE`.
    An example's ``seed`` is ``(shuffle seed + 1) * 2**32 + index``, and ``index``
    when unshuffled."""

    OUTPUT_SIGNATURE = OUTPUT_SIGNATURE

    def element(self, index: int, example: Seq2SeqExample, seed: Optional[int]) -> dict[str, Any]:
        base = 0 if seed is None else seed + 1
        return {"index": np.int32(index), "guid": example.guid, "source": example.source, "target": example.target,
                "answer": example.answer, "seed": np.int64(base * 2**32 + index)}

    def __str__(self) -> str:
        return f"Seq2SeqSource({self._loader})"

    __repr__ = __str__
