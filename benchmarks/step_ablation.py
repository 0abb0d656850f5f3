"""The train step with and without the 2026-12-07 changes, side by side in one process.

    python benchmarks/step_ablation.py [--rounds 8]

"old" patches in what glm-jax had before them (commit 851f775):

* the dense attention's backward with the mask's select over the scores;
* flax's nn.LayerNorm (autodiff's backward);
* a GELU that is not rematerialised;
* projections as einsums over (batch, length) and multi-axis kernels;
* the sparse loss's embedding gradient contracting (groups, rows), scaled afterwards;
* optax's clip_by_global_norm (a divide per element).

"new" is the library as it is. Same config as step_breakdown.py (issue 18's: hidden
512, 8 layers, vocab 30592, 4 x 512, fp32, sparse logits). Prints both programs'
bytes run (step_breakdown.executed_bytes), the loss and the largest gradient
difference, and the median times of alternated rounds.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
# First: importing it sets host memory as `glm-jax` does on CPU, before JAX starts
# (glm_jax/host_memory.py; GLM_JAX_HOST_MALLOC=system measures with glibc's defaults).
import step_breakdown as sb  # noqa: E402

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

from glm_jax import optim, sharding, sparse_logits, train, train_state  # noqa: E402
from glm_jax.model import GLM, attention  # noqa: E402
from glm_jax.model import glm as glm_module  # noqa: E402
from glm_jax.model import projection  # noqa: E402
from glm_jax.multihost import global_batch_from_local  # noqa: E402


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def old_dense(query, key, value, mask, keep, rate):
    """The dense attention before 8d1e97c: the mask's select over [batch, heads, q, kv]."""
    return attention._dense_fwd(query, key, value, mask, keep, rate)[0]


def _old_dense_bwd(rate, residuals, d_out):
    query, key, value, mask, keep, probs = residuals
    d_value = jnp.einsum("bhqk,bqhd->bkhd", probs, d_out)
    d_probs = jnp.einsum("bqhd,bkhd->bhqk", d_out, value, preferred_element_type=jnp.float32)
    p = probs.astype(jnp.float32)
    d_scores = jnp.where(mask, p * (d_probs - jnp.sum(d_probs * p, axis=-1, keepdims=True)), 0.0)
    d_scores = d_scores.astype(query.dtype)
    return (jnp.einsum("bhqk,bkhd->bqhd", d_scores, key), jnp.einsum("bhqk,bqhd->bkhd", d_scores, query),
            d_value, None, None)


old_dense.defvjp(attention._dense_fwd, _old_dense_bwd)


class OldProjection(projection.Projection):
    """The projection before this change: one einsum over (batch, length)."""

    @nn.compact
    def __call__(self, x):
        dtype, param_dtype = jnp.dtype(self.config.dtype), jnp.dtype(self.config.param_dtype)
        kernel = self.param("kernel", projection.param_init(self.init_std, self.kernel_axes), self.kernel_shape,
                            param_dtype)
        bias_shape = self.kernel_shape[len(self.kernel_shape) - len(self.bias_axes):]
        bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, self.bias_axes), bias_shape,
                          param_dtype)
        return jnp.einsum(self.equation, x.astype(dtype), kernel.astype(dtype)) + bias.astype(dtype)


def old_matmul_grads(unit_grad, h, embedding, d_ce):
    d_h = jnp.einsum("gnv,vd->gnd", unit_grad, embedding.astype(h.dtype), preferred_element_type=jnp.float32)
    d_e = jnp.einsum("gnv,gnd->vd", unit_grad, h, preferred_element_type=jnp.float32)
    return (d_h * d_ce).astype(h.dtype), d_e * d_ce


def old_layer_norm(config, name):
    return nn.LayerNorm(epsilon=config.layernorm_epsilon, dtype=jnp.dtype(config.dtype),
                        param_dtype=jnp.dtype(config.param_dtype), use_fast_variance=False, name=name)


@contextlib.contextmanager
def patched(module, **replacements):
    saved = {name: getattr(module, name) for name in replacements}
    for name, value in replacements.items():
        setattr(module, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(module, name, value)


@contextlib.contextmanager
def old_code():
    """Trace (and compile) under this to get the pre-change programs."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(patched(attention, _dense_attention=old_dense))
        stack.enter_context(patched(glm_module, layer_norm=old_layer_norm, Projection=OldProjection))
        stack.enter_context(patched(jax, checkpoint=lambda f, **kwargs: f))  # GELU's remat; no other remat here
        stack.enter_context(patched(sparse_logits, _matmul_grads=old_matmul_grads))
        stack.enter_context(patched(optim, clip_by_global_norm=optax.clip_by_global_norm))
        yield


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args(argv)
    print(f"host memory: {sb.HOST_MEMORY.reason}")
    sizes = argparse.Namespace(preset=None, hidden=512, layers=8, heads=8, vocab=30592, seq=512, dtype="float32",
                               scan=False)
    config = sb.model_config(sizes)
    mesh = sharding.make_mesh((1, -1, 1))
    batch = global_batch_from_local(sb.glm_batch(4, 512, 400, config.vocab_size), mesh)
    loss = train.TokenLoss(logits_capacity=0.5)

    programs, states = {}, {}
    for name, context in (("old", old_code), ("new", contextlib.nullcontext)):
        with context():
            optimizer, schedule = optim.make_optimizer(
                optim.OptimizerConfig(learning_rate=1e-4, warmup_steps=1, decay_steps=10_000))
            state = train_state.init_train_state(config, optimizer, mesh, 0)
            forward = sb.mean_loss(loss, GLM(config), mesh)
            programs[name + " fwd"] = jax.jit(forward).lower(state.params, batch).compile()
            programs[name + " grad"] = jax.jit(jax.value_and_grad(forward, has_aux=True)).lower(
                state.params, batch).compile()
            step = train.make_train_step(config, optimizer, mesh, loss=loss, schedule=schedule)
            programs[name + " train"] = step.lower(state, batch).compile()
            states[name] = state
        train_bytes = sb.executed_bytes(programs[name + " train"].as_text())
        forward_bytes = sb.executed_bytes(programs[name + " fwd"].as_text())
        print(f"{name}: train bytes run {train_bytes:.2f} GB, forward {forward_bytes:.2f} GB, "
              f"ratio {train_bytes / forward_bytes:.2f}", flush=True)
    old = programs["old grad"](states["old"].params, batch)
    new = programs["new grad"](states["new"].params, batch)
    difference = max(float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(old[1]), jax.tree.leaves(new[1])))
    print(f"loss old {float(old[0][0]):.6f} new {float(new[0][0]):.6f}, largest gradient difference {difference:.2e}")

    def run(key):
        name, program = key.split()
        if program == "train":
            states[name], out = programs[key](states[name], batch)
        else:
            out = programs[key](states[name].params, batch)
        return out

    for key in programs:  # warm-up
        jax.block_until_ready(run(key))
    times = {key: [] for key in programs}
    for r in range(args.rounds):
        for key in list(programs) if r % 2 == 0 else list(programs)[::-1]:
            start = time.perf_counter()
            jax.block_until_ready(run(key))
            times[key].append(time.perf_counter() - start)
    ms = {key: 1000 * statistics.median(t) for key, t in times.items()}
    print("median ms: " + ", ".join(f"{key} {value:.0f}" for key, value in ms.items()))
    for name in ("old", "new"):
        forward = ms[name + " fwd"]
        print(f"{name}: bwd+update / fwd {(ms[name + ' train'] - forward) / forward:.2f}, "
              f"backward / fwd {(ms[name + ' grad'] - forward) / forward:.2f}")
    print(f"train step speed new / old: {ms['old train'] / ms['new train']:.3f}")


if __name__ == "__main__":
    main()
