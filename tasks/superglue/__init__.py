"""SuperGLUE as cloze questions for GLM (spec 4.1-4.3): data, seqio tasks, metrics.

* :mod:`tasks.superglue.readers`: the official JSONL files to validated examples.
* :mod:`tasks.superglue.patterns`: patterns and verbalizers of every task.
* :mod:`tasks.superglue.inputs`: the token layout (spec 2.4), with truncation.
* :mod:`tasks.superglue.metrics`: the task metrics and the SuperGLUE average.
* :mod:`tasks.superglue.sources`: seqio DataSources over JSONL folders or TFDS.
* :mod:`tasks.superglue.registry`: ``register_superglue_tasks``, ``task_info``.
* :mod:`tasks.superglue.converter`: fixed-shape batches, ``cloze_batches``.
* :mod:`tasks.superglue.evaluation`: ``evaluate`` through ``seqio.Evaluator``.

Readers, patterns, inputs and metrics are framework-agnostic (python lists and
numpy arrays); the other modules bring in seqio and TensorFlow.
"""

from tasks.superglue.converter import ClozeFeatureConverter, cloze_batches
from tasks.superglue.evaluation import evaluate
from tasks.superglue.inputs import encode_example, verbalizer_ids
from tasks.superglue.metrics import METRIC_FNS, superglue_average
from tasks.superglue.patterns import TASK_PATTERNS, get_task, pieces
from tasks.superglue.readers import LABELS, TASKS, Example, SuperGLUEFormatError, read_split
from tasks.superglue.registry import ClozeTaskInfo, register_superglue_tasks, task_info, task_name, unregister

__all__ = [
    "ClozeFeatureConverter", "ClozeTaskInfo", "Example", "LABELS", "METRIC_FNS", "SuperGLUEFormatError", "TASKS",
    "TASK_PATTERNS", "cloze_batches", "encode_example", "evaluate", "get_task", "pieces", "read_split",
    "register_superglue_tasks", "superglue_average", "task_info", "task_name", "unregister", "verbalizer_ids",
]
