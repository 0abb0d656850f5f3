"""A registered SuperGLUE cloze task as the data of the fine-tuning loop.

:class:`SuperGLUEData` is the :class:`glm_jax.finetune.ClozeData` of
``glm-jax finetune`` and ``glm-jax eval``: each epoch's shuffled training batches
(this process's shard of them) and the validation metrics of a model's predictions.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Optional

import numpy as np

from glm_jax.data.split_data import EpochData
from glm_jax.data.superglue.converter import cloze_batches
from glm_jax.data.superglue.evaluation import evaluate
from glm_jax.data.superglue.registry import task_info


class SuperGLUEData(EpochData):
    """A registered glm_jax/data/superglue/ cloze task as :class:`glm_jax.finetune.ClozeData`.

    Args:
      task_name: the seqio task (``glm_jax.data.superglue.task_name("rte", pattern_id)``).
      config: the run's ``finetune`` section (splits, batch sizes, seed).
      mesh: the run's mesh: with several processes each reads its own shard.
    """

    def __init__(self, task_name: str, config: Any, mesh: Any):
        super().__init__(config, mesh)
        self.task_name = task_name
        self.info = task_info(task_name)

    def num_examples(self, split: str) -> int:
        return self.info.num_examples(split)

    def train_batches(self, epoch: int) -> Iterable[dict[str, np.ndarray]]:
        """Epoch ``epoch``'s batches of ``[local_batch, ...]`` rows, shuffled with ``seed + epoch``
        (as many full batches as :meth:`steps_per_epoch` counts: cloze_batches drops the remainder)."""
        return cloze_batches(
            self.task_name, self.config.train_split, batch_size=self.local_batch, shuffle=True,
            seed=self.config.seed + epoch, drop_remainder=True, shard=self.process_shard(),
        )

    def evaluate(
        self, predict_fn: Callable, output_dir: Optional[str], split: Optional[str] = None
    ) -> dict[str, float]:
        """The task's metrics (percentages) of ``predict_fn``'s choices on ``split``
        (default: the eval split); predictions are written to ``output_dir``."""
        return evaluate(
            self.task_name, split or self.config.eval_split, predict_fn, output_dir=output_dir,
            batch_size=self.config.eval_batch_size,
        )
