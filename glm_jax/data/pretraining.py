"""Registered GLM pretraining tasks, and the one call that adds them for a new corpus.

For a source called ``NAME`` (the embedded corpus is ``embedded``) this registers

    glm_pretrain_token_NAME      token-level blanks (GLM-Base / GLM-Large)
    glm_pretrain_sentence_NAME   whole sentences, [sMASK]
    glm_pretrain_document_NAME   one 50-100% span, [gMASK] (suffix or in place)
    glm_pretrain_multitask_NAME  0.5 / 0.3 / 0.2 per example, task masks, [dBLOCK]
                                 (the GLM-10B recipe, spec 3.4)
    glm_pretrain_doc_NAME        0.5 token / 0.5 document, no task masks (GLM-Doc)
    glm_pretrain_sent_NAME       0.5 token / 0.5 sentence, no task masks (GLM-Sent)

Each task: text -> tokens (the vocabulary) -> ``[CLS]``-led windows across documents
(glm_jax/data/windows.py) -> one blank-infilling example per window (glm_jax/data/objectives.py).
Feed them to the model through ``glm_jax.data.feature_converter.GLMFeatureConverter``.

Every GLM feature is a declared output feature (:func:`output_features`): a
``seqio.Mixture`` keeps only its tasks' declared features, so this is what lets
a mixture of these tasks (corpora mixed with rates) reach the feature converter::

    seqio.MixtureRegistry.add("wiki_books", [("glm_pretrain_token_wiki", 1.0),
                                             ("glm_pretrain_token_books", 3.0)])

Adding a corpus::

    from glm_jax.data import pretraining, sources
    pretraining.register_pretraining_tasks("mywiki", sources.JsonLinesSource({"train": "wiki-*.jsonl"}))
    # -> glm_pretrain_token_mywiki, ..., glm_pretrain_multitask_mywiki

Determinism and restarts: every random choice is a stateless function of seqio's
seed and the example's place in the stream, so ``seqio.get_dataset(..., seed=s)``
gives the same batches every time, and ``ShardInfo`` gives each host a disjoint part
of the documents. To restart at step N without replaying N steps of preprocessing,
checkpoint the ``tf.data`` iterator (glm_jax.checkpointing.TfDataIteratorState,
what ``glm-jax train`` does): it stores the pipeline's position and buffers, and
restoring continues from there.
"""

from __future__ import annotations

import functools
from typing import Mapping, Optional, Sequence

import seqio

from glm_jax.data import example_layout, objectives, sources, windows
from glm_jax.data.objectives import ObjectiveConfig
from glm_jax.data.embedded_vocab import EmbeddedVocabulary
from glm_jax.data.vocab import GLMVocabulary

OBJECTIVES: Mapping[str, ObjectiveConfig] = {
    "token": objectives.GLM_BASE,
    "sentence": ObjectiveConfig(token_prob=0.0, sentence_prob=1.0, task_mask=True),
    "document": ObjectiveConfig(token_prob=0.0, document_prob=1.0, task_mask=True),
    "multitask": objectives.GLM_10B,
    "doc": objectives.GLM_DOC,
    "sent": objectives.GLM_SENT,
}


# Sequence features that are not token ids (nothing decodes them); a fixed object
# so that every task's features compare equal, as a seqio.Mixture requires.
_NOT_TOKENS = seqio.PassThroughVocabulary(size=0)


def task_name(objective: str, source_name: str) -> str:
    return f"glm_pretrain_{objective}_{source_name}"


def output_features(vocabulary: GLMVocabulary) -> dict[str, seqio.Feature]:
    """The pretraining tasks' output features: the whole GLM example (glm_jax/data/example_layout.py).

    ``tokens`` and ``targets`` are ids of ``vocabulary``; ``loss_mask``,
    ``position_ids``, ``block_position_ids`` (int32 ``[n]``) and ``sep`` (int32
    scalar) are not. Declared, not just emitted by the preprocessors, because a
    ``seqio.Mixture`` drops every undeclared feature of its tasks' examples. All
    are required (every example has them: a custom objective that drops one fails
    at the task, naming the feature) and none gets an eos (the layout is final).
    seqio trims the ones named in ``sequence_length`` to that length, which never
    cuts a pretraining example (they are at most ``T`` long).
    """
    features = {name: seqio.Feature(_NOT_TOKENS, add_eos=False) for name in example_layout.FEATURES}
    features["tokens"] = features["targets"] = seqio.Feature(vocabulary, add_eos=False)
    features["sep"] = seqio.Feature(_NOT_TOKENS, add_eos=False, rank=0)
    return features


def _command_preprocessor(fn, vocabulary: GLMVocabulary, **kwargs):
    """Bind the vocabulary's command ids when seqio runs the preprocessor, not at
    registration: reading them loads the sentencepiece model (for the embedded
    vocabulary, builds the corpus), which importing ``tasks`` must not do."""

    def preprocess(dataset, sequence_length=None):
        extra = dict(kwargs)
        if extra.pop("needs_sentence_end", False):
            extra["sentence_end"] = vocabulary.sentence_end_mask()
        return fn(dataset, sequence_length, command_tokens=vocabulary.command_tokens, **extra)

    return preprocess


def register_pretraining_tasks(
    source_name: str,
    source: seqio.DataSource,
    vocabulary: Optional[GLMVocabulary] = None,
    *,
    objective_configs: Optional[Mapping[str, ObjectiveConfig]] = None,
    window_length: Optional[int] = None,
    shuffle_buffer_size: int = seqio.SHUFFLE_BUFFER_SIZE,
    overwrite: bool = False,
) -> list[str]:
    """Register ``glm_pretrain_{objective}_{source_name}`` for each objective.

    Args:
      source_name: suffix of the task names (letters, digits, ``_``).
      source: a seqio DataSource yielding ``{'text': tf.string}`` (glm_jax/data/sources.py).
      vocabulary: default: the embedded corpus' vocabulary.
      objective_configs: name -> ObjectiveConfig; default :data:`OBJECTIVES`.
      window_length: tokens per window before blanking; default ``T - 2``
        (glm_jax/data/windows.py explains the budget).
      shuffle_buffer_size: the tasks' own shuffle buffer, in examples. It applies
        when the caller gives none: in a ``seqio.Mixture`` (whose ``get_dataset``
        takes no buffer size), not under ``glm-jax train`` on a single task, which
        passes ``data.shuffle_buffer``.
      overwrite: replace tasks of the same names (else seqio raises on duplicates).

    Returns:
      The registered task names.
    """
    if not source_name.replace("_", "").isalnum():
        raise ValueError(f"source_name must be letters, digits and '_', got {source_name!r}")
    if shuffle_buffer_size < 1:
        raise ValueError(f"shuffle_buffer_size must be >= 1, got {shuffle_buffer_size}")
    vocabulary = vocabulary if vocabulary is not None else EmbeddedVocabulary()
    names = []
    for objective, config in (objective_configs or OBJECTIVES).items():
        name = task_name(objective, source_name)
        if overwrite and name in seqio.TaskRegistry.names():
            seqio.TaskRegistry.remove(name)
        seqio.TaskRegistry.add(
            name,
            source=source,
            preprocessors=[
                functools.partial(seqio.preprocessors.rekey, key_map={"targets": "text"}),
                seqio.preprocessors.tokenize,
                _command_preprocessor(windows.document_windows, vocabulary, length=window_length),
                _command_preprocessor(
                    objectives.blank_infilling, vocabulary, config=config,
                    needs_sentence_end=config.sentence_prob > 0,
                ),
            ],
            output_features=output_features(vocabulary),
            shuffle_buffer_size=shuffle_buffer_size,
        )
        names.append(name)
    return names


def register_file_tasks(
    source_name: str,
    train_files: Sequence[str],
    validation_files: Optional[Sequence[str]] = None,
    *,
    file_format: str = "jsonl",
    on_error: str = "raise",
) -> list[str]:
    """The pretraining tasks over local (or gs://) files, as ``glm-jax train
    data.files=...`` asks: JSON lines (``jsonl``), one document per line
    (``text``) or blank-line separated documents (``paragraphs``), with the
    embedded vocabulary. Registering again replaces the tasks."""
    splits = {"train": list(train_files)}
    if validation_files:
        splits["validation"] = list(validation_files)
    if file_format == "jsonl":
        source = sources.JsonLinesSource(splits, on_error=on_error)
    elif file_format in ("text", "paragraphs"):
        documents = "line" if file_format == "text" else "paragraph"
        source = sources.TextFileSource(splits, documents=documents, on_error=on_error)
    else:
        raise ValueError(f"data.format must be jsonl, text or paragraphs, got {file_format!r}")
    names = [task_name(objective, source_name) for objective in OBJECTIVES]
    registered = seqio.TaskRegistry.names()
    if all(name in registered for name in names):
        current = seqio.get_mixture_or_task(names[0]).source
        if (type(current), str(current), getattr(current, "_on_error", None)) == (type(source), str(source), on_error):
            # Already registered: keep those source objects, which hold the
            # pipelines' recorded errors (glm_jax.data.CheckedIterator reads them).
            return names
    return register_pretraining_tasks(source_name, source, overwrite=True)
