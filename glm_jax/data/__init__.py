"""glm-jax's data machinery: from text to the rows the model reads.

* vocabularies: :mod:`~glm_jax.data.vocab` (sentencepiece GLM vocabularies;
  :mod:`~glm_jax.data.embedded_vocab`, the embedded one), :mod:`~glm_jax.data.official_vocabs` (the released models'
  BERT, GPT-2/RoBERTa and Chinese tokenizers); :mod:`~glm_jax.data.tokenizers`
  chooses and describes one (what a model directory stores).
* text: :mod:`~glm_jax.data.corpus` (the embedded corpus) and
  :mod:`~glm_jax.data.sources` (seqio sources over it, JSON lines, text files, TFDS).
* examples: :mod:`~glm_jax.data.windows` (``[CLS]``-led windows),
  :mod:`~glm_jax.data.spans` and :mod:`~glm_jax.data.objectives` (blank choice),
  :mod:`~glm_jax.data.example_layout` (Part A / Part B and the 2D positions),
  :mod:`~glm_jax.data.pretraining` (the pretraining seqio tasks for a source).
* batches: :mod:`~glm_jax.data.feature_converter` (packing) and
  :mod:`~glm_jax.data.pipeline` (``data`` config section, per-process sharded,
  checkpointable batches for the training loop).
* fine-tuning: :mod:`~glm_jax.data.superglue` (SuperGLUE as cloze questions),
  :mod:`~glm_jax.data.seq2seq` (conditional generation rows) and
  :mod:`~glm_jax.data.seq2seq_files` (the official `.source`/`.target` folders).
* zero-shot: :mod:`~glm_jax.data.language_model` (LAMBADA rows, perplexity windows).

The named tasks (``glm_pretrain_*_embedded``, ``glm_superglue_*``) are registered
by the top-level ``tasks`` package, which imports this one, never the reverse.
"""
