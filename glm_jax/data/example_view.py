"""One sample of a registered task as the model sees it: as text, and as a picture
of its attention mask (``glm-jax show-example``, glm_jax/cli/show_example.py).

    row, vocab = load_example("glm_pretrain_token_embedded", index=0, seq_len=64)
    print(format_example(row, vocab))
    render_example(row, vocab, "example.png")

The sample goes through the same path as training: the seqio task, then
``glm_jax.data.feature_converter.GLMFeatureConverter`` (padded, or packed).
Tasks whose examples are already model rows (the SuperGLUE cloze tasks: ``tokens``,
``position_ids``, ``block_position_ids``, ``sep``, one row per candidate for
multi-token tasks) are shown as they come. The text shows Part A with its blanks,
each Part B span opened by ``[sop]`` next to the blank it fills, Part A with the
spans put back, and a table of token / target / position id / block position id /
loss mask. The picture is the attention mask that the model builds
(glm_jax.model.masks), drawn by glm_jax.plots.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import seqio
import tensorflow as tf

from glm_jax import plots
from glm_jax.data.feature_converter import GLMFeatureConverter
from glm_jax.data.pipeline import DEFAULT_TASK_MODULES, CheckedIterator, import_task_modules
from glm_jax.data.vocab import GLMVocabulary
from glm_jax.model import masks

#: Short display names of the command tokens (the official literals are long).
_COMMAND_NAMES = (
    ("eos", "[eos]"), ("pad", "[pad]"), ("cls", "[CLS]"), ("mask", "[MASK]"), ("smask", "[sMASK]"),
    ("gmask", "[gMASK]"), ("sop", "[sop]"), ("eop", "[eop]"), ("unk", "[UNK]"), ("dblock", "[dBLOCK]"),
    ("sep", "[SEP]"),
)
_LITERAL_NAMES = {"<|startofpiece|>": "[sop]", "<|endofpiece|>": "[eop]", "<|endoftext|>": "[eos]"}
#: Registered task names with these prefixes are the ones show-example is made for.
TASK_PREFIXES = ("glm_pretrain_", "glm_superglue_")
_SEQUENCES = ("tokens", "targets", "loss_mask", "position_ids", "block_position_ids")
_CLOZE_FEATURES = ("tokens", "position_ids", "block_position_ids", "sep")


@dataclasses.dataclass(frozen=True)
class ExampleRow:
    """One model row.

    Attributes:
      tokens, targets, loss_mask, position_ids, block_position_ids: ``[T]`` int
        (cloze rows without targets carry zeros there).
      sep: the Part A length of an unpacked row; None for a packed one.
      segment_ids: ``[T]`` int, packed rows only: 1, 2, ... per example, 0 on padding.
      part_a: ``[T]`` bool, packed rows only.
      pad_id: the tokens' padding id.
    """

    tokens: np.ndarray
    targets: np.ndarray
    loss_mask: np.ndarray
    position_ids: np.ndarray
    block_position_ids: np.ndarray
    sep: Optional[int] = None
    segment_ids: Optional[np.ndarray] = None
    part_a: Optional[np.ndarray] = None
    pad_id: int = 0

    def __post_init__(self):
        if (self.sep is None) == (self.segment_ids is None):
            raise ValueError("give an ExampleRow either sep (unpacked) or segment_ids + part_a (packed)")
        t = self.tokens.shape
        for name in (*_SEQUENCES[1:], "segment_ids", "part_a"):
            value = getattr(self, name)
            if value is not None and value.shape != t:
                raise ValueError(f"ExampleRow.{name} has shape {value.shape}, tokens {t}")

    def head(self, n: int) -> "ExampleRow":
        """The first ``n`` tokens. Its attention mask is the top-left ``n x n`` of this
        row's: the GLM rule looks only at earlier keys and at Part A."""
        cut = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for name in (*_SEQUENCES, "segment_ids", "part_a"):
            if cut[name] is not None:
                cut[name] = cut[name][:n]
        if self.sep is not None:
            cut["sep"] = min(self.sep, n)
        return ExampleRow(**cut)

    @property
    def length(self) -> int:
        return int(self.tokens.shape[0])

    def attention_mask(self) -> np.ndarray:
        """``[T, T]`` bool (query, key) from glm_jax.model.masks, as the model builds it."""
        if self.sep is not None:
            return np.asarray(masks.sep_mask(np.array([self.sep]), self.length))[0, 0]
        return np.asarray(masks.segment_mask(self.segment_ids[None], self.part_a[None]))[0, 0]


@dataclasses.dataclass(frozen=True)
class Span:
    """A Part B span: ``[sop]`` at ``start``, up to ``end`` (exclusive); ``blank`` is
    the index of the Part A blank it fills (None if its position points elsewhere)."""

    start: int
    end: int
    blank: Optional[int]


@dataclasses.dataclass(frozen=True)
class Segment:
    """One example of a row: Part A ``[start, sep)``, Part B ``[sep, end)``."""

    start: int
    sep: int
    end: int
    spans: tuple[Span, ...]


def _real_length(row: ExampleRow) -> int:
    """Tokens before the right padding of an unpacked row.

    The converter pads with the pad id and zeros, after Part B. A real token never
    looks like that past index 0 of Part A: Part A tokens carry their own position,
    Part B tokens a block position >= 1, and a padding token has both 0.
    """
    pad = (
        (row.tokens == row.pad_id) & (row.position_ids == 0) & (row.block_position_ids == 0) & (row.loss_mask == 0)
    )
    n = row.length
    while n > max(row.sep, 1) and pad[n - 1]:
        n -= 1
    return n


def segments_of(row: ExampleRow) -> tuple[Segment, ...]:
    """The examples of a row and their spans (a span starts at block position 1)."""
    if row.sep is not None:
        bounds = [(0, row.sep, _real_length(row))]
    else:
        bounds = []
        ids = row.segment_ids
        i = 0
        while i < row.length:
            j = i
            while j < row.length and ids[j] == ids[i]:
                j += 1
            if ids[i] > 0:
                bounds.append((i, i + int(row.part_a[i:j].sum()), j))
            i = j
    segments = []
    for start, sep, end in bounds:
        starts = [i for i in range(sep, end) if i == sep or row.block_position_ids[i] == 1]
        spans = []
        for s, e in zip(starts, starts[1:] + [end]):
            blank = start + int(row.position_ids[s])
            spans.append(Span(s, e, blank if start <= blank < sep else None))
        segments.append(Segment(start, sep, end, tuple(spans)))
    return tuple(segments)


def token_regions(row: ExampleRow, segments: Sequence[Segment]) -> plots.TokenRegions:
    """The :class:`glm_jax.plots.TokenRegions` of a row (spans numbered across it)."""
    span = np.full(row.length, -1, np.int32)
    blank_of = np.zeros(row.length, np.int32)
    k = 0
    for seg in segments:
        span[seg.start : seg.sep] = 0
        for sp in seg.spans:
            k += 1
            span[sp.start : sp.end] = k
            if sp.blank is not None:
                blank_of[sp.blank] = k
    return plots.TokenRegions(span, blank_of, tuple((s.start, s.sep, s.end) for s in segments))


def token_labels(vocab: Any, ids: Sequence[int], padding: Optional[np.ndarray] = None) -> list[str]:
    """One display string per id: command tokens by short name, pieces as the
    sentencepiece piece (``▁`` marks a word start; bytes show as ``<0xE2>``)."""
    names: dict[int, str] = {}
    commands = getattr(vocab, "command_tokens", None)
    for field, name in _COMMAND_NAMES if commands is not None else ():
        value = getattr(commands, field, None)
        if value is not None:
            names.setdefault(int(value), name)
    pieces = vocab.num_pieces if isinstance(vocab, GLMVocabulary) else 0
    labels = []
    for pos, i in enumerate(int(x) for x in ids):
        if padding is not None and padding[pos]:
            labels.append("[pad]")
        elif i in names:
            labels.append(names[i])
        elif i < pieces:
            labels.append(vocab.tokenizer.IdToPiece(i))
        else:
            try:
                labels.append(vocab.decode([i]) or f"<{i}>")
            except Exception:  # noqa: BLE001 (an id the vocabulary cannot render: show the number)
                labels.append(f"<{i}>")
    return labels


def _decode(vocab: Any, ids: Sequence[int]) -> str:
    text = vocab.decode([int(i) for i in ids]) if len(ids) else ""
    for literal, name in _LITERAL_NAMES.items():
        text = text.replace(literal, name)
    return text.strip()


def _continues_word(label: str) -> bool:
    """Whether a sentencepiece piece continues the previous word (no ``▁``, not a
    command or byte)."""
    return bool(label) and not label.startswith(("\u2581", "[", "<")) and label[0].isalnum()


def format_example(row: ExampleRow, vocab: Any, header: str = "") -> str:
    """The row as text: parts, spans, Part A with spans put back, and the token table."""
    segments = segments_of(row)
    padding = token_regions(row, segments).span < 0
    labels = token_labels(vocab, row.tokens, padding)
    pieces = isinstance(vocab, GLMVocabulary)  # labels are sentencepiece pieces
    lines = [header] if header else []
    lines.append(f"T = {row.length} tokens: {len(segments)} example(s), {int(padding.sum())} padding")
    span_number = 0
    span_of = {}
    for n, seg in enumerate(segments, 1):
        tag = f"example {n} (tokens {seg.start}-{seg.end - 1}): " if row.sep is None else ""
        lines += ["", f"{tag}Part A, {seg.sep - seg.start} tokens, bidirectional (each sees all of Part A):",
                  "  " + _decode(vocab, row.tokens[seg.start : seg.sep])]
        lines += ["", f"Part B, {seg.end - seg.sep} tokens in {len(seg.spans)} span(s), autoregressive "
                      "(each sees Part A and the Part B tokens before it):"]
        fills = {}
        for sp in seg.spans:
            span_number += 1
            span_of.update({i: span_number for i in range(sp.start, sp.end)})
            content = row.tokens[sp.start + 1 : sp.end]
            text = " ".join(filter(None, [labels[sp.start], _decode(vocab, content)]))
            where = (f"fills the {labels[sp.blank]} at {sp.blank}" if sp.blank is not None
                     else f"position {int(row.position_ids[sp.start])}")
            lines.append(f"  span {span_number} ({where}): {text}")
            if sp.blank is not None:
                fills[sp.blank] = _decode(vocab, content)
        if fills:
            text, last = "", seg.start
            for blank in [*sorted(fills), seg.sep]:
                chunk = _decode(vocab, row.tokens[last:blank])
                # A chunk that continues a word (its first piece has no word-start
                # mark, e.g. the "s" of "assertion[s]") is glued to the span before it.
                glue = pieces and last > seg.start and last < blank and _continues_word(labels[last])
                text += ("" if glue or not text or not chunk else " ") + chunk
                if blank < seg.sep:
                    text += f" ⟦{fills[blank]}⟧"
                last = blank + 1
            lines += ["", "Part A with the spans put back:", "  " + text.strip()]

    lines += ["", _table(row, labels, padding, span_of, vocab)]
    return "\n".join(lines)


def _table(row: ExampleRow, labels, padding, span_of, vocab) -> str:
    packed = row.sep is None
    target_labels = token_labels(vocab, row.targets)
    head = f"{'idx':>5}  {'ex':>3}  " if packed else f"{'idx':>5}  "
    out = [head + f"{'part':<5} {'token':<16} {'pos':>5} {'block':>5} {'loss':>4}  target"]
    i = 0
    while i < row.length:
        if padding[i]:
            j = i
            while j < row.length and padding[j]:
                j += 1
            out.append(f"{i:>5}  ... {j - i} padding token(s), idx {i}-{j - 1}")
            i = j
            continue
        if row.sep is not None:
            part_a = i < row.sep
            seg = ""
        else:
            part_a = bool(row.part_a[i])
            seg = f"{int(row.segment_ids[i]):>3}  "
        part = "A" if part_a else f"B{span_of.get(i, '?')}"
        target = target_labels[i] if row.loss_mask[i] else ""
        out.append(f"{i:>5}  {seg}{part:<5} {labels[i]:<16} {int(row.position_ids[i]):>5} "
                   f"{int(row.block_position_ids[i]):>5} {int(row.loss_mask[i]):>4}  {target}")
        i += 1
    return "\n".join(out)


# ------------------------------------------------------------------ loading


def supported_tasks() -> list[str]:
    """Registered tasks and mixtures whose names start with :data:`TASK_PREFIXES`."""
    import_task_modules(DEFAULT_TASK_MODULES)  # the built-in tasks
    names = set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names())
    return sorted(n for n in names if n.startswith(TASK_PREFIXES))


def check_task(task: str) -> None:
    """ValueError naming the supported tasks when ``task`` is not registered."""
    import_task_modules(DEFAULT_TASK_MODULES)
    if task not in set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names()):
        raise ValueError(f"unknown task {task!r}; registered GLM tasks: {', '.join(supported_tasks())}")


def _vocabulary(provider) -> Any:
    features = provider.output_features
    for name in ("targets", "tokens", *features):
        if name in features and hasattr(features[name].vocabulary, "command_tokens"):
            return features[name].vocabulary
    raise ValueError(f"task {provider.name} has no GLM vocabulary (one with command tokens) in "
                     f"its output features {sorted(features)}")


def _nth(ds, index: int, what: str, provider) -> dict[str, np.ndarray]:
    # CheckedIterator: a bad document is one DataError line, never a hang.
    example = next(CheckedIterator(ds.skip(index).take(1).as_numpy_iterator(), provider, endless=False), None)
    if example is None:
        raise ValueError(f"{what} has no example {index} (it has fewer than {index + 1})")
    return example


def load_example(
    task: str,
    *,
    split: str = "train",
    index: int = 0,
    seq_len: int = 64,
    pack: bool = False,
    seed: int = 0,
    candidate: int = 0,
    text_length: Optional[int] = None,
) -> tuple[ExampleRow, Any]:
    """Row ``index`` of ``split`` of a registered task, and the task's vocabulary.

    Pretraining-style tasks (``tokens``, ``targets``, ``loss_mask``, ``position_ids``,
    ``block_position_ids``, ``sep``) go through ``GLMFeatureConverter(pack=pack)`` at
    ``seq_len`` tokens per row; cloze rows (``tokens``, ``position_ids``,
    ``block_position_ids``, ``sep``, maybe per ``candidate``) are taken as they are.
    The data is read in order (no shuffling); ``seed`` seeds the blank choices;
    ``text_length`` caps each example's text as ``data.text_length`` does (so short
    examples can be packed several to a row).

    Raises:
      ValueError: unknown task or split, too few examples, or features that are neither.
    """
    if seq_len < 8:
        raise ValueError(f"seq_len must be >= 8, got {seq_len}")
    if index < 0 or candidate < 0:
        raise ValueError(f"index and candidate must be >= 0, got {index} and {candidate}")
    check_task(task)
    tf.config.set_visible_devices([], "GPU")  # host-side data only; leave accelerators to JAX
    provider = seqio.get_mixture_or_task(task)
    vocab = _vocabulary(provider)
    splits = getattr(provider, "splits", None)
    if splits and split not in splits:
        raise ValueError(f"task {task} has no split {split!r}; it has {', '.join(sorted(splits))}")
    # Cloze tasks (no `targets` feature) fix their own row length: a sequence length
    # would make seqio trim those rows. Pretraining tasks (`targets`) need one.
    lengths = {"tokens": seq_len, "targets": seq_len} if "targets" in provider.output_features else None
    if lengths is not None and text_length is not None:
        if not 8 <= text_length <= seq_len:
            raise ValueError(f"text_length must be in 8..seq_len ({seq_len}), got {text_length}")
        lengths["text"] = text_length
    ds = provider.get_dataset(sequence_length=lengths, split=split, shuffle=False, seed=seed, num_epochs=1)
    spec = ds.element_spec
    pad_id = vocab.command_tokens.pad
    where = f"task {task} split {split}"
    ranks = {name: spec[name].shape.rank for name in spec}

    if all(ranks.get(n) == 1 for n in _SEQUENCES) and ranks.get("sep") == 0:
        converter = GLMFeatureConverter(pack=pack, command_tokens=vocab.command_tokens)
        ex = _nth(converter(ds, {"tokens": seq_len}), index, where + (" (packed rows)" if pack else ""), provider)
        seq = {n: np.asarray(ex[n]) for n in _SEQUENCES}
        if pack:
            return ExampleRow(**seq, segment_ids=ex["segment_ids"], part_a=ex["part_a"].astype(bool),
                              pad_id=pad_id), vocab
        return ExampleRow(**seq, sep=int(ex["sep"]), pad_id=pad_id), vocab

    if all(n in ranks for n in _CLOZE_FEATURES) and ranks["tokens"] in (1, 2):
        if pack:
            raise ValueError(f"--pack needs pretraining-style examples; {task} gives cloze rows")
        ex = _nth(ds, index, where, provider)
        if ranks["tokens"] == 2:  # one row per candidate
            n = ex["tokens"].shape[0]
            if candidate >= n:
                raise ValueError(f"{where} example {index} has {n} candidates; --candidate {candidate} is too large")
            ex = {k: (v[candidate] if np.ndim(v) >= 1 and np.shape(v)[0] == n else v) for k, v in ex.items()}
        elif candidate:
            raise ValueError(f"{task} has one row per example; --candidate must be 0")
        zeros = np.zeros_like(ex["tokens"])
        seq = {n: np.asarray(ex.get(n, zeros)) for n in _SEQUENCES}
        return ExampleRow(**seq, sep=int(ex["sep"]), pad_id=pad_id), vocab

    raise ValueError(
        f"task {task} gives features {sorted(spec)}; show-example needs GLM rows (tokens, position_ids, "
        f"block_position_ids, sep). Supported tasks: {', '.join(supported_tasks())}"
    )


def render_example(
    row: ExampleRow,
    vocab: Any,
    path: str | Path,
    *,
    title: str = "",
    cell: Optional[int] = None,
    max_padding: int = 4,
) -> plots.MaskFigure:
    """Draw the row's attention mask (glm_jax.plots.render_attention_mask); returns its MaskFigure.

    Trailing padding beyond ``max_padding`` tokens is left out of the picture (a cloze
    row of 256 tokens may hold 20 real ones); the subtitle says how many.
    """
    segments = segments_of(row)
    end = max((s.end for s in segments), default=0)
    dropped = max(row.length - end - max_padding, 0)
    shown = row.head(row.length - dropped) if dropped else row
    regions = token_regions(shown, segments)
    labels = token_labels(vocab, shown.tokens, regions.span < 0)
    parts = "; ".join(
        f"Part A {s.sep - s.start}, Part B {s.end - s.sep} in {len(s.spans)} span(s)" for s in segments[:3]
    ) + ("; ..." if len(segments) > 3 else "")
    cropped = f" ({dropped} more padding tokens not drawn)" if dropped else ""
    subtitle = f"T = {row.length}{cropped}: {parts}. Row = query, column = key; a coloured cell may attend."
    row = shown
    return plots.render_attention_mask(row.attention_mask(), regions, labels, path,
                                       title=title or "GLM attention mask", subtitle=subtitle, cell=cell)
