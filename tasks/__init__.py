"""The seqio registrations of glm-jax's built-in tasks (what ``data.task`` names).

Importing ``tasks`` registers:

* ``glm_pretrain_{token,sentence,document,multitask,doc,sent}_embedded``: the
  pretraining objectives over the corpus embedded in every Python installation
  (tasks/pretrain.py);
* ``glm_superglue_{task}[_pattern{k}]``: the SuperGLUE cloze tasks over TFDS
  ``super_glue`` with the embedded vocabulary (tasks/superglue.py).

Everything these registrations use (vocabularies, sources, objectives, the
feature converter, SuperGLUE readers and patterns) is library code under
``glm_jax/data``; this package only names tasks, as T5X's ``t5/data/tasks.py``
does, and nothing in ``glm_jax`` imports it. Registration is cheap: the corpus,
its vocabulary and the data are read on first use. ``glm-jax`` imports this module
through ``data.task_modules`` (default ``["tasks"]``).
"""

from tasks import pretrain, superglue

pretrain.register_embedded()
superglue.register_default()
