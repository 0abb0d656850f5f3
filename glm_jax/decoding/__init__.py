"""Generation and scoring with GLM: blank infilling with a key/value cache.

* :func:`generate` / :func:`infill` / :func:`infill_text`: fill blanks left to
  right (spec 2.3) by greedy search, sampling or beam search (spec 4.4), all in
  one jitted loop per batch (glm_jax/decoding/search.py).
* :func:`score` / :func:`score_batch`: log-probabilities of candidate fills of a
  blank (spec 4.1 multi-token cloze).
* glm_jax/decoding/text_prompts.py: prompts written as text, in an input style, to
  the records ``glm-jax generate`` (glm_jax/cli/generate.py) prints.

The cache itself lives in the model (``GLM(..., decode=True)``, glm_jax/model/glm.py).
"""

from glm_jax.decoding.infill import Generation, TextGeneration, Vocabulary, generate, infill, infill_text
from glm_jax.decoding.prompt_layout import blank_positions, build_context, fill_blanks
from glm_jax.decoding.scoring import score, score_batch
from glm_jax.decoding.settings import STRATEGIES, DecodeSettings

__all__ = [
    "STRATEGIES",
    "DecodeSettings",
    "Generation",
    "TextGeneration",
    "Vocabulary",
    "blank_positions",
    "build_context",
    "fill_blanks",
    "generate",
    "infill",
    "infill_text",
    "score",
    "score_batch",
]
