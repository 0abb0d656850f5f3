"""The train step with and without the 2026-12-07 changes, side by side in one process.

    python benchmarks/step_ablation.py [rounds]

"old" patches in what glm-jax had before them (the dense attention's backward with the
mask's select over the scores, flax's nn.LayerNorm, a GELU that is not rematerialised);
"new" is the library as it is. Same config as step_breakdown.py (issue 18's: hidden 512,
8 layers, vocab 30592, 4 x 512, fp32, sparse logits). Prints both programs' bytes run,
the loss and the largest gradient difference, and the median times of alternated rounds.
"""
import argparse
import contextlib
import functools
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import step_breakdown as sb  # noqa: E402
from glm_jax import sharding, train, train_state  # noqa: E402
from glm_jax.model import GLM, attention  # noqa: E402
import glm_jax.model.glm as glm_mod  # noqa: E402
from glm_jax.multihost import global_batch_from_local  # noqa: E402
from glm_jax.optim import OptimizerConfig, make_optimizer  # noqa: E402


# The dense attention as it was before 7d08194: the mask's select over [batch, heads, q, kv].
@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def old_dense(query, key, value, mask, keep, rate):
    return attention._dense_fwd(query, key, value, mask, keep, rate)[0]


def old_bwd(rate, residuals, d_out):
    query, key, value, mask, keep, probs = residuals
    d_value = jnp.einsum("bhqk,bqhd->bkhd", probs, d_out)
    d_probs = jnp.einsum("bqhd,bkhd->bhqk", d_out, value, preferred_element_type=jnp.float32)
    p = probs.astype(jnp.float32)
    d_scores = jnp.where(mask, p * (d_probs - jnp.sum(d_probs * p, axis=-1, keepdims=True)), 0.0).astype(query.dtype)
    return jnp.einsum("bhqk,bkhd->bqhd", d_scores, key), jnp.einsum("bhqk,bqhd->bkhd", d_scores, query), d_value, None, None


old_dense.defvjp(attention._dense_fwd, old_bwd)


@contextlib.contextmanager
def old_code():
    saved = (attention._dense_attention, glm_mod.layer_norm, jax.checkpoint)
    attention._dense_attention = old_dense
    glm_mod.layer_norm = lambda c, name: nn.LayerNorm(epsilon=c.layernorm_epsilon, dtype=jnp.dtype(c.dtype), param_dtype=jnp.dtype(c.param_dtype), use_fast_variance=False, name=name)
    jax.checkpoint = lambda f, **kw: f
    try:
        yield
    finally:
        attention._dense_attention, glm_mod.layer_norm, jax.checkpoint = saved


def main() -> None:
    ns = argparse.Namespace(preset=None, hidden=512, layers=8, heads=8, vocab=30592, batch=4, seq=512, part_a=400, dtype="float32", scan=False, capacity=0.5)
    cfg = sb.model_config(ns)
    mesh = sharding.make_mesh((1, -1, 1))
    opt, sched = make_optimizer(OptimizerConfig(learning_rate=1e-4, warmup_steps=1, decay_steps=10_000))
    batch = global_batch_from_local(sb.glm_batch(4, 512, 400, cfg.vocab_size), mesh)
    loss = train.TokenLoss(logits_capacity=0.5)

    progs, states = {}, {}
    for name, ctx in (("old", old_code), ("new", contextlib.nullcontext)):
        with ctx():
            st = train_state.init_train_state(cfg, opt, mesh, 0)
            f = sb.mean_loss(loss, GLM(cfg), mesh)
            progs[name + " fwd"] = jax.jit(f).lower(st.params, batch).compile()
            progs[name + " grad"] = jax.jit(jax.value_and_grad(f)).lower(st.params, batch).compile()
            progs[name + " train"] = train.make_train_step(cfg, opt, mesh, loss=loss, schedule=sched).lower(st, batch).compile()
            states[name] = st
            print(name, "train bytes run %.2f GB, fwd %.2f GB" % (sb.executed_bytes(progs[name + " train"].as_text()), sb.executed_bytes(progs[name + " fwd"].as_text())), flush=True)
    g_old = progs["old grad"](states["old"].params, batch); g_new = progs["new grad"](states["new"].params, batch)
    print("loss", float(g_old[0]), float(g_new[0]), "max grad diff", max(float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(g_old[1]), jax.tree.leaves(g_new[1]))))
    def run(k):
        name, prog = k.split()
        if prog == "train":
            states[name], out = progs[k](states[name], batch)
        else:
            out = progs[k](states[name].params, batch)
        return out
    for k in progs: jax.block_until_ready(run(k))
    t = {k: [] for k in progs}
    for r in range(int(sys.argv[1]) if len(sys.argv) > 1 else 8):
        for k in (list(progs) if r % 2 == 0 else list(progs)[::-1]):
            s = time.perf_counter(); jax.block_until_ready(run(k)); t[k].append(time.perf_counter() - s)
    m = {k: 1000 * statistics.median(v) for k, v in t.items()}
    print({k: round(v) for k, v in m.items()})
    for n in ("old", "new"):
        print(n, "bwd+update/fwd %.2f  backward/fwd %.2f" % ((m[n+" train"] - m[n+" fwd"]) / m[n+" fwd"], (m[n+" grad"] - m[n+" fwd"]) / m[n+" fwd"]))
    print("train speed new/old %.3f" % (m["old train"] / m["new train"]))


if __name__ == "__main__":
    main()
