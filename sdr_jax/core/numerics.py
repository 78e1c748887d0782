"""Small array helpers shared by losses, kNN and clustering."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    """x / ||x|| along the last axis, in float32; `eps` floors the squared norm (a zero row
    stays zero)."""
    x = jnp.asarray(x).astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps))
