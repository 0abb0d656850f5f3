"""``python -m glm_jax.cli ...``: the ``glm-jax`` command (the tests start it this way)."""

from glm_jax.cli import entry

entry()
