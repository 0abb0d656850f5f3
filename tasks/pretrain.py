"""Pretraining tasks over the embedded corpus: ``glm_pretrain_<objective>_embedded``.

The embedded corpus (glm_jax/data/corpus.py) is built from the Python standard
library's own sources and documentation, so these tasks run anywhere without a
download. Register a corpus of your own the same way (see
glm_jax/data/pretraining.py), or point ``data.files`` at it.
"""

from __future__ import annotations

from glm_jax.data import pretraining
from glm_jax.data.sources import EmbeddedCorpusSource

EMBEDDED_SOURCE = "embedded"


def register_embedded(overwrite: bool = False) -> list[str]:
    """Registers ``glm_pretrain_*_embedded``; cheap: nothing is built until a
    dataset is requested."""
    return pretraining.register_pretraining_tasks(EMBEDDED_SOURCE, EmbeddedCorpusSource(), overwrite=overwrite)
