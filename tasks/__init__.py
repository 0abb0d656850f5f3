"""seqio registrations for GLM: vocabulary, corpora, blank-infilling objectives.

Importing ``tasks`` registers the embedded corpus' pretraining tasks
(``glm_pretrain_{token,sentence,document,multitask}_embedded``; see tasks/pretrain.py).
It also registers the SuperGLUE cloze tasks ``glm_superglue_{task}[_pattern{k}]``
over TFDS ``super_glue`` with the embedded vocabulary (see tasks/superglue/registry.py).
Registration is cheap: the corpus, its vocabulary and the data are read on first use.
"""

from tasks.pretrain import register_embedded as _register_embedded
from tasks.superglue.registry import register_default as _register_superglue

_register_embedded()
_register_superglue()
