"""GLM's pretraining objectives as a seqio preprocessor (spec sections 2.2, 2.3, 3).

``blank_infilling`` maps each window ``{'targets': [CLS] t1 ... (int32 [n])}`` (from
glm_jax/data/windows.py) to one GLM example::

    tokens, targets, loss_mask, position_ids, block_position_ids   int32 [<= T]
    sep                                                            int32 scalar

with ``T = sequence_length['tokens']``. No other feature is emitted. Per example it
draws one objective with :class:`ObjectiveConfig`'s probabilities:

* token:    Poisson(3) spans on 1..39 until 15% of the tokens are masked (``[MASK]``);
* sentence: whole sentences until 15% (``[sMASK]`` with task masks, else ``[MASK]``);
* document: one span of 50%-100% of the text, generated as a suffix after the mask
  (``gpt_infill_prob``) or blanked at a random place (``[gMASK]`` / ``[MASK]``).

Where the spans go and how long windows are cut is in glm_jax/data/spans.py; the layout in
glm_jax/data/example_layout.py.

Deviations from the official ``ConstructBlockStrategy`` (documented choices):

* The objective is drawn per example, not once per batch.
* Examples never exceed ``T``: the window is cut to ``T - 2k`` tokens while choosing
  ``k`` spans (officially the example may grow to ``n + 2k``); the ratio is of the
  cut length. With ``sequence_length["text"] = C`` (``data.text_length``) the text is
  also capped at ``C`` and rows of ``T = C + budget`` grow to ``C + 2k`` as the
  official ones do (glm_jax/data/spans.py, "Length budget").
* The document objective draws its length per example, not one maximum per batch.
* Spans never cover a ``[CLS]`` or eos (officially only the ``[CLS]`` after a
  document boundary and the sample's last token are excluded).
* Samples whose spans do not fit are not dropped; the spans that do not fit are
  (only windows of many tiny documents). A sentence-level window without a whole
  sentence clear of its last token (one long run-on sentence) gets no blank.
* ``[dBLOCK]`` corruption applies, as officially, to the token objective only.
  ``short_seq_prob``, ``single_span_prob``, ``context_mask_ratio``, sentinel tokens,
  the encoder-decoder and masked-LM baselines are not implemented.

Randomness: ``seqio.map_over_dataset(num_seeds=1)`` hands every example its own
stateless seed, so the output is a pure function of the data and the seed set with
``seqio.map_seed_manager`` (seqio does this for ``get_dataset(seed=...)``).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping, NamedTuple, Optional

import numpy as np
import seqio
import tensorflow as tf

from glm_jax.command_tokens import CommandTokens
from glm_jax.data import example_layout, spans

@dataclasses.dataclass(frozen=True)
class ObjectiveConfig:
    """What to blank, with the official flag each field mirrors (spec 3.3).

    Attributes:
      token_prob, sentence_prob, document_prob: per-example probabilities of the
        three objectives (``bert_prob``, ``gap_sentence_prob``, the rest); sum to 1.
      mask_ratio: token objective's mask ratio (``bert_ratio``).
      sentence_ratio: sentence objective's ratio (``gap_sentence_ratio``).
      poisson_lambda: mean of the span-length Poisson (``avg_block_length``).
      max_span_length: longest token span (``max_block_length - 1`` = 39).
      gpt_min_ratio: shortest document span as a fraction of the text.
      gpt_infill_prob: probability that the document span is generated as a suffix.
      task_mask: distinct ``[sMASK]`` / ``[gMASK]`` for sentence / document spans.
      block_mask_prob: ``[dBLOCK]`` corruption of token-level Part B inputs.
      shuffle_spans: False = the ``no_shuffle_block`` ablation (Part B in text order).
      block_positions: False = the ``no_block_position`` ablation.
    """

    token_prob: float = 1.0
    sentence_prob: float = 0.0
    document_prob: float = 0.0
    mask_ratio: float = 0.15
    sentence_ratio: float = 0.15
    poisson_lambda: float = 3.0
    max_span_length: int = 39
    gpt_min_ratio: float = 0.5
    gpt_infill_prob: float = 0.5
    task_mask: bool = False
    block_mask_prob: float = 0.0
    shuffle_spans: bool = True
    block_positions: bool = True

    def __post_init__(self):
        probs = self.probabilities
        if min(probs) < 0 or abs(sum(probs) - 1.0) > 1e-6:
            raise ValueError(f"objective probabilities must be >= 0 and sum to 1, got {probs}")
        for name in ("mask_ratio", "sentence_ratio"):
            if not 0.0 < getattr(self, name) < 0.5:
                raise ValueError(f"{name} must be in (0, 0.5), got {getattr(self, name)}")
        for name in ("gpt_min_ratio", "gpt_infill_prob", "block_mask_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.poisson_lambda <= 0 or self.max_span_length < 1:
            raise ValueError("poisson_lambda must be > 0 and max_span_length >= 1")

    @property
    def probabilities(self) -> tuple[float, float, float]:
        """(token, sentence, document)."""
        return (self.token_prob, self.sentence_prob, self.document_prob)


# The paper's pretraining mixtures (spec 3.4); the 10B one also uses task masks and
# [dBLOCK] corruption.
GLM_BASE = ObjectiveConfig()
GLM_DOC = ObjectiveConfig(token_prob=0.5, document_prob=0.5)
GLM_SENT = ObjectiveConfig(token_prob=0.5, sentence_prob=0.5)
GLM_10B = ObjectiveConfig(
    token_prob=0.5,
    sentence_prob=0.3,
    document_prob=0.2,
    gpt_min_ratio=0.25,
    task_mask=True,
    block_mask_prob=0.1,
)
PRESETS: Mapping[str, ObjectiveConfig] = {
    "glm_base": GLM_BASE,
    "glm_large": GLM_BASE,
    "glm_doc": GLM_DOC,
    "glm_sent": GLM_SENT,
    "glm_10b": GLM_10B,
}

Example = dict[str, tf.Tensor]


class Blanks(NamedTuple):
    """What one objective chose for one window (the layout is shared).

    Attributes:
      chosen: the spans and the cut length (glm_jax/data/spans.py).
      mask_id: int32 scalar, the token that replaces each span in Part A.
      suffix: bool scalar, suffix generation (the one span is generated after the
        mask, without ``[eop]``; spec 2.3).
      corrupt: bool scalar, apply ``[dBLOCK]`` corruption (token level only).
    """

    chosen: spans.Spans
    mask_id: tf.Tensor
    suffix: tf.Tensor
    corrupt: tf.Tensor


def make_example_fn(
    seq_len: int,
    command_tokens: CommandTokens,
    config: ObjectiveConfig = GLM_BASE,
    sentence_end: Optional[np.ndarray] = None,
    text_cap: Optional[int] = None,
) -> Callable[[tf.Tensor, tf.Tensor], Example]:
    """The per-example map: ``(text int32 [n], seed [2]) -> example`` (see module doc).

    Args:
      seq_len: ``T``; every example has at most ``T`` tokens.
      text_cap: the most text tokens, so Part A's positions stay below it
        (glm_jax/data/spans.py, "Length budget"); None: ``T``.
      command_tokens: the vocabulary's command-token ids.
      config: the objective mixture.
      sentence_end: bool ``[vocab]``, needed when ``config.sentence_prob > 0``.
    """
    ct = command_tokens
    _check_tokens(ct, config, sentence_end)
    barriers = (ct.cls, ct.eos)
    length_pmf = spans.truncated_poisson_pmf(config.poisson_lambda, config.max_span_length)
    sentence_table = None if sentence_end is None else tf.constant(np.asarray(sentence_end, bool))
    smask = ct.smask if config.task_mask else ct.mask
    gmask = ct.gmask if config.task_mask else ct.mask
    no, yes = tf.constant(False), tf.constant(True)

    def token(text: tf.Tensor, seed: tf.Tensor) -> Blanks:
        chosen = spans.token_spans(
            text, seq_len, seed, barrier_ids=barriers, ratio=config.mask_ratio, length_pmf=length_pmf,
            text_cap=text_cap,
        )
        return Blanks(chosen, tf.constant(ct.mask), no, yes)

    def sentence(text: tf.Tensor, seed: tf.Tensor) -> Blanks:
        chosen = spans.sentence_spans(
            text, seq_len, seed, barrier_ids=barriers, sentence_end=sentence_table, ratio=config.sentence_ratio,
            text_cap=text_cap,
        )
        return Blanks(chosen, tf.constant(smask), no, no)

    def document(text: tf.Tensor, seed: tf.Tensor) -> Blanks:
        gen = spans.generation_span(
            text, seq_len, seed, barrier_ids=barriers, min_ratio=config.gpt_min_ratio,
            suffix_prob=config.gpt_infill_prob, text_cap=text_cap,
        )
        # A span of length 0 (windows of < 3 tokens) is no span: Part A only.
        count = tf.minimum(gen.length, 1)
        chosen = spans.Spans(gen.start[None][:count], gen.length[None][:count], gen.text_length)
        return Blanks(chosen, tf.constant(gmask), gen.suffix & (count > 0), no)

    chosen_fns = [fn for fn, p in zip((token, sentence, document), config.probabilities) if p > 0]
    cumulative = np.cumsum([p for p in config.probabilities if p > 0])[:-1].astype(np.float32)

    def choose(text: tf.Tensor, seeds: tf.Tensor) -> Blanks:
        if len(chosen_fns) == 1:
            return chosen_fns[0](text, seeds[1])
        u = tf.random.stateless_uniform([], seeds[0])
        index = tf.reduce_sum(tf.cast(u >= cumulative, tf.int32))
        # Only the span choice branches; the layout below is shared (branch bodies
        # run slower than top-level ops in tf.data, so they are kept small).
        return tf.switch_case(index, [lambda fn=fn: fn(text, seeds[1]) for fn in chosen_fns])

    def example_fn(text: tf.Tensor, seed: tf.Tensor) -> Example:
        text = tf.cast(text, tf.int32)
        # One split per example: [objective choice, spans, Part B order, dBLOCK].
        seeds = tf.random.experimental.stateless_split(seed, 4)
        blanks = choose(text, seeds)
        chosen = blanks.chosen
        ids = tf.range(tf.size(chosen.starts))
        order = tf.random.experimental.stateless_shuffle(ids, seeds[2]) if config.shuffle_spans else ids
        corrupt = config.block_mask_prob > 0 and config.token_prob > 0
        return example_layout.infilling_layout(
            text[: chosen.text_length],
            chosen.starts,
            chosen.lengths,
            order,
            mask_id=blanks.mask_id,
            sop_id=ct.sop,
            eop_id=ct.eop,
            block_positions=config.block_positions,
            suffix=blanks.suffix if config.document_prob > 0 else False,
            dblock_id=ct.dblock if corrupt else None,
            dblock_prob=tf.where(blanks.corrupt, config.block_mask_prob, 0.0) if corrupt else 0.0,
            seed=seeds[3],
        )

    return example_fn


def _check_tokens(ct: CommandTokens, config: ObjectiveConfig, sentence_end: Optional[np.ndarray]) -> None:
    if config.task_mask and config.sentence_prob > 0 and ct.smask is None:
        raise ValueError("task_mask with the sentence objective needs an [sMASK] id")
    if config.task_mask and config.document_prob > 0 and ct.gmask is None:
        raise ValueError("task_mask with the document objective needs a [gMASK] id")
    if config.block_mask_prob > 0 and config.token_prob > 0 and ct.dblock is None:
        raise ValueError("block_mask_prob > 0 needs a [dBLOCK] id")
    if config.sentence_prob > 0 and sentence_end is None:
        raise ValueError("the sentence objective needs a sentence_end table (vocab.sentence_end_mask())")


def blank_infilling(
    dataset: tf.data.Dataset,
    sequence_length: Mapping[str, int],
    *,
    command_tokens: CommandTokens,
    config: ObjectiveConfig = GLM_BASE,
    sentence_end: Optional[np.ndarray] = None,
    text_key: str = "targets",
) -> tf.data.Dataset:
    """seqio preprocessor: windows -> GLM examples (see module docstring).

    Use it in a Task with ``functools.partial(blank_infilling, command_tokens=...,
    config=...)``; seqio passes ``sequence_length``.

    Args:
      dataset: examples with ``text_key`` int32 ``[n]`` windows starting with [CLS].
      sequence_length: the task feature lengths; ``sequence_length['tokens']`` is T.
      command_tokens: the vocabulary's command-token ids.
      config: the objective mixture (see the presets GLM_BASE, GLM_DOC, ...).
      sentence_end: bool ``[vocab]`` sentence-end table, for the sentence objective.
      text_key: the feature holding the window.

    Returns:
      A dataset of GLM examples.
    """
    # sequence_length["text"] (data.text_length), when given, caps the text.
    example_fn = make_example_fn(sequence_length["tokens"], command_tokens, config, sentence_end,
                                 sequence_length.get("text"))

    @seqio.map_over_dataset(num_seeds=1)
    def apply(features: Mapping[str, tf.Tensor], seed: tf.Tensor) -> Example:
        return example_fn(features[text_key], seed)

    return apply(dataset)
