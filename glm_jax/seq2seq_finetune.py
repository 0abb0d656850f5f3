"""Seq2seq fine-tuning (spec 4.4): the label-smoothed token loss, and evaluation by
decoding the whole validation split.

:class:`Seq2SeqObjective` is what conditional-generation tasks plug into the
fine-tuning loop (glm_jax/finetune.py): training rows are the official
``Seq2SeqDataset`` rows (glm_jax/data/seq2seq.py), the loss is
``train.TokenLoss(label_smoothing)`` (smoothing over the full vocabulary, as
upstream), and at every epoch's end :func:`generate` decodes each validation
example from its Part A with the task's beam search (or greedy) settings, and
the task's metrics score the texts (glm_jax/data/seq2seq_tasks.py).

Decoding is batched and jitted (glm_jax/decoding/search.py, one compiled loop
for every batch of a split): each batch is sharded over the mesh's data axes,
every process feeds its own rows, and the generated ids are gathered once per
batch. Part A keeps its padding, which the model attends to, as upstream
(``sep = src_length``); the blank is filled from its position, with block
positions from 1. Yahoo infilling (``fill_blanks``) decodes greedily through every
``[MASK]`` of Part A left to right, each ``[eop]`` moving to the next blank (upstream's
``BlankLMEvaluater``), and returns the text with its blanks filled.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from typing import Any, Callable, Iterable, Mapping, Optional

import jax
import numpy as np

from glm_jax import multihost, sharding, train
from glm_jax.command_tokens import CommandTokens
from glm_jax.data.seq2seq_tasks import TASKS
from glm_jax.decoding import prompt_layout, search
from glm_jax.decoding.infill import split_spans
from glm_jax.decoding.settings import DecodeSettings
from glm_jax.model import ModelConfig
from glm_jax.optim import make_optimizer
from glm_jax.typed_config import require_at_least, require_positive

Batch = Mapping[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class Seq2SeqConfig:
    """The ``seq2seq`` section of a fine-tuning run: one row of spec 4.4's table.

    Attributes:
      src_length: Part A's length (upstream ``--src-seq-length``): the source is
        cut, then padded to it.
      tgt_length: Part B's length in training (``--tgt-seq-length``), and the most
        tokens decoding generates.
      label_smoothing: epsilon of the loss (``--label-smoothing``).
      min_tgt_length: ``[eop]`` is forbidden before this many tokens (``--min-tgt-length``).
      num_beams: beam width (``--num-beams``); 1: greedy.
      length_penalty: a finished hypothesis scores ``sum logprob / n ** this``.
      no_repeat_ngram_size: forbid repeating an n-gram of this size (0: off).
      select_topk: take the 2K best candidates per step (upstream ``--select-topk``,
        as the task scripts set it); False samples them, upstream's default.
      seed: seeds the candidate sampling when ``select_topk`` is False.
      mask_ratio: yahoo_blank only: the fraction of words masked in training and
        validation rows, and the test file read (``test.maskratio{r}.blank``).
    """

    src_length: int = 512
    tgt_length: int = 64
    label_smoothing: float = 0.1
    min_tgt_length: int = 0
    num_beams: int = 5
    length_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    select_topk: bool = True
    seed: int = 0
    mask_ratio: float = 0.1

    def __post_init__(self):
        require_positive("seq2seq", self, "num_beams")
        require_at_least("seq2seq", self, 8, "src_length")
        require_at_least("seq2seq", self, 2, "tgt_length")
        require_at_least("seq2seq", self, 0, "min_tgt_length", "no_repeat_ngram_size", "length_penalty")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"seq2seq.label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if not 0.0 < self.mask_ratio < 1.0:
            raise ValueError(f"seq2seq.mask_ratio must be in (0, 1), got {self.mask_ratio}")
        if self.min_tgt_length >= self.tgt_length:
            raise ValueError(f"seq2seq.min_tgt_length={self.min_tgt_length} must be below "
                             f"seq2seq.tgt_length={self.tgt_length}")

    def decode_settings(self) -> DecodeSettings:
        """The decoding of the evaluation (upstream ``DecoderEvaluater``)."""
        beam = self.num_beams > 1
        return DecodeSettings(
            strategy="beam" if beam else "greedy", max_new_tokens=self.tgt_length, min_length=self.min_tgt_length,
            num_beams=self.num_beams, length_penalty=self.length_penalty,
            no_repeat_ngram_size=self.no_repeat_ngram_size, beam_sample=beam and not self.select_topk,
        )


def _padded(batch: Batch, rows: int) -> dict[str, np.ndarray]:
    """``batch`` with copies of its first row up to ``rows`` rows, as padding (example_id -1)."""
    n = len(batch["example_id"])
    out = {k: np.concatenate([v, np.repeat(v[:1], rows - n, axis=0)]) for k, v in batch.items()}
    out["example_id"][n:] = -1
    return out


def generate(
    params: Any,
    batches: Iterable[Batch],
    *,
    model_config: ModelConfig,
    settings: DecodeSettings,
    command_tokens: CommandTokens,
    src_length: int,
    mesh: Any,
    seed: int = 0,
    fill_blanks: bool = False,
    total: Optional[int] = None,
    print_fn: Callable[[str], None] = print,
) -> dict[int, list[int]]:
    """Decode every real row of ``batches`` (whole batches of seq2seq rows, the same
    on every process): ``{example_id: generated ids}``, without the closing
    ``[eop]`` and padding (upstream drops both before decoding to text).

    Args:
      fill_blanks: fill every ``[MASK]`` of Part A in turn and return Part A with
        its blanks filled (padding dropped) instead of the generated ids; a row
        without a blank comes back as it is.
      total: the split's example count, for the progress lines (every ~10%:
        examples done, examples/s, ETA); None: no progress lines.
    """
    shards = math.prod(mesh.shape[a] for a in sharding.BATCH_AXES)
    loop = search.beam_search if settings.strategy == "beam" else search.sample
    drop = {command_tokens.eop, command_tokens.pad}
    out: dict[int, list[int]] = {}
    start, next_report = time.perf_counter(), 0.1
    rng = jax.random.key(seed)
    for index, batch in enumerate(batches):
        size = -(-len(batch["example_id"]) // shards) * shards
        batch = _padded(batch, size)
        part_a = batch["tokens"][:, :src_length]
        if fill_blanks:
            blanks, counts = _blanks(part_a, command_tokens)
        else:
            blanks, counts = batch["position_ids"][:, src_length:src_length + 1], np.ones([size], np.int32)
        context = {
            "tokens": part_a,
            "lengths": np.full([size], src_length, np.int32),
            "blank_positions": blanks,
            "num_blanks": np.maximum(counts, 1).astype(np.int32),
        }
        rows = multihost.process_batch_indices(mesh, size)
        arrays = multihost.global_batch_from_local({k: v[rows] for k, v in context.items()}, mesh, size)
        with sharding.activate(mesh):
            result = loop(params, arrays["tokens"], arrays["lengths"], arrays["blank_positions"],
                          arrays["num_blanks"], jax.random.fold_in(rng, index), config=model_config,
                          settings=settings, command_tokens=command_tokens)
        tokens, lengths = multihost.gather_to_host((result.tokens, result.num_tokens))
        for i, (example_id, row, length) in enumerate(zip(batch["example_id"], tokens, lengths)):
            if example_id < 0:
                continue
            generated = [int(t) for t in row[:length]]
            if fill_blanks:
                positions = blanks[i, :counts[i]].tolist()
                spans = split_spans(generated, settings.end_ids(command_tokens), len(positions))
                filled = prompt_layout.fill_blanks(part_a[i].tolist(), positions, spans if positions else [],
                                                   command_tokens)
                out[int(example_id)] = [t for t in filled if t != command_tokens.pad]
            else:
                out[int(example_id)] = [t for t in generated if t not in drop]
        if total and len(out) >= next_report * total:
            elapsed = time.perf_counter() - start
            rate = len(out) / max(elapsed, 1e-9)
            print_fn(f"decoding: {len(out)}/{total} examples, {rate:.1f} examples/s, "
                     f"ETA {max(total - len(out), 0) / max(rate, 1e-9):.0f} s")
            next_report = math.floor(10 * len(out) / total + 1) / 10
    return out


def _blanks(part_a: np.ndarray, command_tokens: CommandTokens) -> tuple[np.ndarray, np.ndarray]:
    """``([rows, S] positions of each row's blanks, [rows] their counts)``; S is the
    most blanks of a row rounded up to a multiple of 4 (fewer compiled shapes)."""
    is_blank = np.isin(part_a, command_tokens.mask_ids())
    counts = is_blank.sum(axis=1).astype(np.int32)
    width = max(4, -(-int(counts.max(initial=0)) // 4) * 4)
    positions = np.zeros([len(part_a), width], np.int32)
    for i, row in enumerate(is_blank):
        found = np.flatnonzero(row)
        positions[i, :len(found)] = found
    return positions, counts


@functools.lru_cache(maxsize=4)
def _steps(model_config, optimizer_config, mesh, label_smoothing, logits_capacity, num_microbatches, seed,
           skip_nonfinite):
    """``(optimizer, train_step)``, built once per settings in a process (a restarted
    run in the same process finds its step compiled)."""
    optimizer, schedule = make_optimizer(optimizer_config)
    loss = train.TokenLoss(label_smoothing, logits_capacity=logits_capacity)
    train_step = train.make_train_step(
        model_config, optimizer, mesh, loss=loss, schedule=schedule,
        num_microbatches=num_microbatches, seed=seed, skip_nonfinite=skip_nonfinite,
    )
    return optimizer, train_step


class Seq2SeqObjective:
    """Seq2seq fine-tuning for :func:`glm_jax.finetune.run` (its ``Objective``).

    Args:
      command_tokens: the vocabulary's (decoding stops on ``[eop]``).
      print_fn: where decoding progress goes.
    """

    weight_key = train.TokenLoss.count
    loss_name = "token loss"

    def __init__(self, command_tokens: CommandTokens, print_fn: Callable[[str], None] = print):
        self.command_tokens = command_tokens
        self.print_fn = print_fn
        self._config = self._mesh = None

    def bind(self, config: Any, mesh: Any) -> "Seq2SeqObjective":
        """Evaluate with ``config`` (a resolved ``FinetuneRunConfig``) on ``mesh``."""
        self._config, self._mesh = config, mesh
        return self

    def build(self, config: Any, mesh: Any) -> tuple[Any, Callable]:
        """``(optimizer, train_step)`` for a resolved ``FinetuneRunConfig``."""
        ft = config.finetune
        self.bind(config, mesh)
        s2s = config.seq2seq
        # Part B holds at most tgt_length loss tokens per row: the output layer runs
        # only there, and the capacity can never be exceeded.
        capacity = s2s.tgt_length / (s2s.src_length + s2s.tgt_length)
        return _steps(config.model, config.optimizer, mesh, s2s.label_smoothing, capacity, ft.num_microbatches,
                      ft.seed, ft.on_nonfinite == "skip_step")

    def static(self, batch: Batch) -> None:
        return None

    def evaluate(self, params: Any, data: Any, output_dir: Optional[str], split: Optional[str] = None
                 ) -> tuple[dict[str, float], dict[str, float]]:
        """``(metrics, {})``: ``data`` (a ``Seq2SeqData``) scores the texts decoded
        from ``split`` (default: its eval split)."""
        if self._config is None:
            raise RuntimeError("Seq2SeqObjective.evaluate before bind or build")
        s2s = self._config.seq2seq
        split = split or self._config.finetune.eval_split

        fill = TASKS[self._config.finetune.task].kind == "blank"

        def generate_fn(batches):
            return generate(params, batches, model_config=self._config.model, settings=s2s.decode_settings(),
                            command_tokens=self.command_tokens, src_length=s2s.src_length, mesh=self._mesh,
                            seed=s2s.seed, fill_blanks=fill, total=data.num_examples(split),
                            print_fn=self.print_fn)

        return data.evaluate(generate_fn, output_dir, split=split), {}
