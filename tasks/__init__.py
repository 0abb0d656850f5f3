"""seqio registrations for GLM: vocabulary, corpora, blank-infilling objectives.

Importing ``tasks`` registers the embedded corpus' pretraining tasks
(``glm_pretrain_{token,sentence,document,multitask}_embedded``; see tasks/pretrain.py).
Registration is cheap: the corpus and its vocabulary are built on first use.
"""

from tasks.pretrain import register_embedded as _register_embedded

_register_embedded()
