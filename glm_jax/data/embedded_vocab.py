"""The GLM vocabulary of the embedded corpus (glm_jax/data/corpus.py): 8000
sentencepiece pieces plus GLM's command tokens, 8064 ids.

Apart from :mod:`glm_jax.data.vocab` so that the vocabulary class does not depend
on the corpus: any sentencepiece model makes a ``GLMVocabulary``.
"""

from __future__ import annotations

import os
from typing import Optional, Union

from glm_jax.data import corpus
from glm_jax.data.vocab import GLMVocabulary


class EmbeddedVocabulary(GLMVocabulary):
    """The GLM vocabulary over the embedded corpus' model (``glm_jax/data/corpus.py``).

    Lazy and portable: constructing it reads nothing, and the first use builds the
    corpus if the cache lacks it. Pickles carry only ``cache_dir`` (None: resolved
    on the host that unpickles it), so a worker elsewhere rebuilds the same model
    locally.
    """

    def __init__(
        self,
        cache_dir: Optional[Union[str, os.PathLike]] = None,
        *,
        pad_to_multiple_of: int = 128,
    ):
        self._cache_dir = None if cache_dir is None else os.fspath(cache_dir)
        super().__init__("spm.model", pad_to_multiple_of=pad_to_multiple_of)

    @property
    def sentencepiece_model_file(self) -> str:
        return str(corpus.embedded_dir(self._cache_dir) / corpus.SPM_FILE)

    def _read_model_proto(self) -> bytes:
        return corpus.embedded_corpus(self._cache_dir).spm_model_file.read_bytes()
