"""Make XLA compute a value once and store it, instead of fusing it into every consumer.

XLA fuses cheap elementwise producers into their consumers and duplicates them when
there are several. In a Transformer's backward that goes wrong twice (seen in the
compiled CPU program, benchmarks/RESULTS.md "Train step: forward vs backward"):

* the residual stream's gradient is a chain of adds through every later layer;
  fused into each layer's weight-gradient matmul input, the whole chain is
  re-evaluated per layer, O(layers^2) memory traffic;
* ``softmax - onehot`` of the output layer, fused into both of its gradient matmuls,
  is computed twice, inside the matmuls' operand reads.

``jax.lax.optimization_barrier`` is the tool for this, and GPU and TPU compilers keep
it; XLA's CPU pipeline removes barriers before fusion, so on CPU the value is passed
through a two-branch ``lax.cond`` instead (a conditional's operand is materialised).
On GPU a conditional would cost a device-to-host sync per call, so the choice is made
per target platform (that of the mesh being traced, as for the attention kernels).
"""

from __future__ import annotations

import jax

from glm_jax.model import attention

Array = jax.Array


def materialize(x: Array) -> Array:
    """``x``, computed once and stored (the module docstring says why)."""
    if attention.target_platform() != "cpu":
        return jax.lax.optimization_barrier(x)
    flat = x.reshape(-1)
    # A data-dependent predicate is not folded away, and branches that differ are not
    # merged (identical ones are, conditional and all). The second runs only when the
    # first element is NaN; ``v + 0`` keeps every value (and the NaN) there.
    keep = flat[0] == flat[0]
    return jax.lax.cond(keep, lambda v: v, lambda v: v + jax.numpy.zeros((), v.dtype), x)


@jax.custom_vjp
def materialize_gradient(x: Array) -> Array:
    """Identity whose incoming gradient is :func:`materialize`-d: at a residual-stream
    boundary, the sum of all later layers' contributions is stored once."""
    return x


def _fwd(x: Array) -> tuple[Array, None]:
    return x, None


def _bwd(_, g: Array) -> tuple[Array]:
    return (materialize(g),)


materialize_gradient.defvjp(_fwd, _bwd)
