"""SuperGLUE cloze tasks over TFDS: ``glm_superglue_{task}[_pattern{k}]``.

Every task and pattern of spec 4.2, read from the prepared TFDS ``super_glue``
datasets and encoded with the embedded vocabulary. Fine-tuning a pretrained model
registers its own tasks with that model's vocabulary and data folder
(``glm_jax.data.superglue.register_superglue_tasks``); these names are for
browsing (``glm-jax show-example``) and for seqio mixtures.
"""

from __future__ import annotations

from glm_jax.data.superglue.registry import register_superglue_tasks


def register_default(overwrite: bool = False) -> list[str]:
    """Registers every task and pattern over TFDS with the embedded vocabulary."""
    return register_superglue_tasks(overwrite=overwrite)
