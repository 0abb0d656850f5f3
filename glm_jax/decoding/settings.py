"""How to decode: one frozen, validated dataclass (it is a static argument of the
jitted loops, so it must be hashable, and a bad value must fail before compiling)."""

from __future__ import annotations

import dataclasses

from glm_jax.command_tokens import CommandTokens

STRATEGIES = ("greedy", "sample", "beam")


@dataclasses.dataclass(frozen=True)
class DecodeSettings:
    """Decoding strategy and limits (spec 4.4 for the beam-search semantics).

    Attributes:
      strategy: "greedy", "sample" (temperature / top-k / top-p) or "beam".
      max_new_tokens: model steps per prompt, i.e. tokens sampled in total over all
        of a prompt's blanks, each blank's closing ``[eop]`` included (the
        ``[sop]`` that opens a blank is fed, not sampled, and costs nothing here).
        A blank still open when the budget runs out is returned unfinished. Also
        bounds the block position ids, so it must not exceed the model's
        ``max_position_embeddings``.
      min_length: ``[eop]`` is forbidden until the current blank has this many
        tokens (the official MinLengthLogitsProcessor, counted per blank).
      temperature, top_k, top_p: "sample" only. Logits are divided by the
        temperature, then only the top_k largest (0: all) are kept, then the
        smallest set whose probability reaches top_p (1.0: all); the order and
        tie rules of the Hugging Face warpers.
      num_beams: "beam" only: the fixed beam width K.
      length_penalty: "beam" only: a finished hypothesis scores
        ``sum_logprob / max(n, 1) ** length_penalty`` with n its generated tokens
        (its final ``[eop]`` excluded), as the official BeamSearchScorer does.
      no_repeat_ngram_size: if > 0, a token that would repeat an n-gram already
        present in the tokens generated for this prompt is forbidden.
      beam_sample: "beam" only: draw the 2K candidates per step at random from
        ``softmax(beam scores)`` (the official default, ``multinomial``) instead
        of taking the top 2K (the official ``--select-topk``).
    """

    strategy: str = "greedy"
    max_new_tokens: int = 64
    min_length: int = 0
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    num_beams: int = 1
    length_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    beam_sample: bool = False

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.min_length < 0:
            raise ValueError(f"min_length must be >= 0, got {self.min_length}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0 (use strategy='greedy' for argmax), got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 disables it), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.num_beams < 1:
            raise ValueError(f"num_beams must be >= 1, got {self.num_beams}")
        if self.num_beams > 1 and self.strategy != "beam":
            raise ValueError(f"num_beams={self.num_beams} needs strategy='beam', got {self.strategy!r}")
        if self.no_repeat_ngram_size < 0:
            raise ValueError(f"no_repeat_ngram_size must be >= 0, got {self.no_repeat_ngram_size}")

    @property
    def beam_width(self) -> int:
        """Rows per prompt in the decode loop: K for beam search, else 1."""
        return self.num_beams if self.strategy == "beam" else 1

    def end_ids(self, command_tokens: CommandTokens) -> tuple[int, ...]:
        """The tokens that close a blank.

        ``[eop]`` always. Greedy and sampling also stop a blank on eos (``<|endoftext|>``),
        as the official generate_samples.py does; beam search, like the official
        DecoderEvaluater, ends hypotheses on ``[eop]`` only (so at most K of the 2K
        candidates can end one, which its bookkeeping relies on).
        """
        if self.strategy == "beam" or command_tokens.eos == command_tokens.eop:
            return (command_tokens.eop,)
        return (command_tokens.eop, command_tokens.eos)
