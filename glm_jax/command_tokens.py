"""The ids of GLM's command tokens for one vocabulary.

Decoding, the pretraining objectives and the cloze tasks all need these ids; each
vocabulary (ours over sentencepiece, or the official BERT / GPT-2 / Chinese ones)
builds one. Facts: spec section 2.1. pad and eos share an id in every official
vocabulary (the official code asserts it).
"""

from __future__ import annotations

import dataclasses
from typing import Optional


@dataclasses.dataclass(frozen=True)
class CommandTokens:
    """Command-token ids. Optional ones are None when the vocabulary lacks them
    (``[sMASK]``/``[gMASK]`` only with task masks; ``[dBLOCK]`` only for its corruption)."""

    pad: int
    eos: int
    cls: int
    mask: int
    sop: int
    eop: int
    unk: int
    smask: Optional[int] = None
    gmask: Optional[int] = None
    dblock: Optional[int] = None
    sep: Optional[int] = None

    def mask_ids(self) -> tuple[int, ...]:
        """Every id that opens a blank: ``[MASK]``, ``[sMASK]``, ``[gMASK]``."""
        return tuple(i for i in (self.mask, self.smask, self.gmask) if i is not None)
