"""SimSiam loss and a collapse monitor."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from sdr_jax.core.numerics import l2_normalize


def negative_cosine(p: jax.Array, z: jax.Array) -> jax.Array:
    """D(p, z) = -cos(p, stop_grad(z)), averaged over the batch (rows)."""
    if p.shape != z.shape:
        raise ValueError(f"negative_cosine needs p and z of the same shape, got {p.shape} and {z.shape}.")
    z = jax.lax.stop_gradient(z)
    return -jnp.mean(jnp.sum(l2_normalize(p) * l2_normalize(z), axis=-1))


def simsiam_loss(p1: jax.Array, p2: jax.Array, z1: jax.Array, z2: jax.Array) -> jax.Array:
    """Symmetric SimSiam loss D(p1, z2)/2 + D(p2, z1)/2, in [-1, 1]."""
    return 0.5 * (negative_cosine(p1, z2) + negative_cosine(p2, z1))


def siamkd_loss(kd_prediction: jax.Array, teacher_z: jax.Array) -> jax.Array:
    """SiamKD: a sub-net predicts the SDRnet's projection of the same image, one way
    (stop-gradient on the teacher), in SimSiam's negative-cosine form."""
    return negative_cosine(kd_prediction, teacher_z)


def l2_distill_loss(kd_prediction: jax.Array, teacher_z: jax.Array) -> jax.Array:
    """The L2 distillation baseline: mean squared error to the stop-gradient teacher."""
    teacher_z = jax.lax.stop_gradient(teacher_z).astype(jnp.float32)
    return jnp.mean(jnp.sum((kd_prediction.astype(jnp.float32) - teacher_z) ** 2, axis=-1))


def collapse_std(z: jax.Array, axis_name: str | None = None) -> jax.Array:
    """Std over the batch of the L2-normalised `z`, averaged over dims.

    SimSiam's collapse monitor: for healthy (spread out) outputs of dimension d
    it is about 1/sqrt(d); when all outputs collapse to one vector it goes to 0.
    With `axis_name` (inside `jax.shard_map`, equal batch shards) the std is over the global
    batch: the mean of per-device stds would depend on the device count (a std over 2 rows
    is not a std over 16), so the monitor would too.
    """
    x = l2_normalize(z)
    if axis_name is None:
        return jnp.mean(jnp.std(x, axis=0))
    # Two passes (mean, then squared deviations) as jnp.std does: no cancellation.
    mean = jax.lax.pmean(jnp.mean(x, axis=0), axis_name)
    var = jax.lax.pmean(jnp.mean(jnp.square(x - mean), axis=0), axis_name)
    return jnp.mean(jnp.sqrt(var))
