"""SuperGLUE as cloze questions for GLM (spec 4.1-4.3): inputs and metrics.

* :mod:`tasks.superglue.readers`: the official JSONL files to validated examples.
* :mod:`tasks.superglue.patterns`: patterns and verbalizers of every task.
* :mod:`tasks.superglue.inputs`: the token layout (spec 2.4), with truncation.
* :mod:`tasks.superglue.metrics`: the task metrics and the SuperGLUE average.

Everything here is framework-agnostic (python lists and numpy arrays).
"""

from tasks.superglue.inputs import encode_example, verbalizer_ids
from tasks.superglue.metrics import METRIC_FNS, superglue_average
from tasks.superglue.patterns import TASK_PATTERNS, get_task, pieces
from tasks.superglue.readers import LABELS, TASKS, Example, SuperGLUEFormatError, read_split

__all__ = [
    "Example", "LABELS", "METRIC_FNS", "SuperGLUEFormatError", "TASKS", "TASK_PATTERNS",
    "encode_example", "get_task", "pieces", "read_split", "superglue_average", "verbalizer_ids",
]
