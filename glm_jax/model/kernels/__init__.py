"""Blockwise attention kernels for the GLM mask (see glm_jax/model/attention.py).

* :mod:`.blocks`: which (query block, key block) tiles are fully masked, fully
  visible or partial, derived from per-token segment ids and Part A flags.
* :mod:`.blockwise`: flash-style attention in plain JAX that skips masked tiles.
* :mod:`.pallas_gpu`: the same scheme as a Pallas kernel (Triton lowering on GPU).
* :mod:`.pallas_tpu`: the same scheme as a Pallas TPU kernel (Mosaic lowering).
"""
