"""SuperGLUE as cloze questions for GLM (spec 4.1-4.3): data, seqio tasks, metrics.

* :mod:`glm_jax.data.superglue.readers`: the official JSONL files to validated examples.
* :mod:`glm_jax.data.superglue.patterns`: patterns and verbalizers of every task.
* :mod:`glm_jax.data.superglue.inputs`: the token layout (spec 2.4), with truncation.
* :mod:`glm_jax.data.superglue.metrics`: the task metrics and the SuperGLUE average.
* :mod:`glm_jax.data.superglue.sources`: seqio DataSources over JSONL folders or TFDS.
* :mod:`glm_jax.data.superglue.registry`: ``register_superglue_tasks``, ``task_info``.
* :mod:`glm_jax.data.superglue.converter`: fixed-shape batches, ``cloze_batches``.
* :mod:`glm_jax.data.superglue.evaluation`: ``evaluate`` through ``seqio.Evaluator``.
* :mod:`glm_jax.data.superglue.finetune_data`: ``SuperGLUEData``, a task as the fine-tuning loop's data.

Readers, patterns, inputs and metrics are framework-agnostic (python lists and
numpy arrays); the other modules bring in seqio and TensorFlow.
"""

from glm_jax.data.superglue.converter import ClozeFeatureConverter, cloze_batches
from glm_jax.data.superglue.evaluation import evaluate
from glm_jax.data.superglue.inputs import encode_example, verbalizer_ids
from glm_jax.data.superglue.metrics import METRIC_FNS, superglue_average
from glm_jax.data.superglue.patterns import TASK_PATTERNS, get_task, pieces
from glm_jax.data.superglue.readers import LABELS, TASKS, Example, SuperGLUEFormatError, read_split
from glm_jax.data.superglue.registry import ClozeTaskInfo, register_superglue_tasks, task_info, task_name, unregister

__all__ = [
    "ClozeFeatureConverter", "ClozeTaskInfo", "Example", "LABELS", "METRIC_FNS", "SuperGLUEFormatError", "TASKS",
    "TASK_PATTERNS", "cloze_batches", "encode_example", "evaluate", "get_task", "pieces", "read_split",
    "register_superglue_tasks", "superglue_average", "task_info", "task_name", "unregister", "verbalizer_ids",
]
