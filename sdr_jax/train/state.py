"""The training state: one pytree, replicated on the mesh, donated to every step."""
from __future__ import annotations

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    method_state: Any  # the SSL method's extra state (BYOL: the EMA target network); {} if none


def init_variables(model: nn.Module, rng: jax.Array, image_size: int, path: jax.Array) -> dict:
    images = jnp.zeros((2, image_size, image_size, 3), jnp.uint8)
    return model.init(rng, images, path, train=False)


def create_train_state(model: nn.Module, tx: optax.GradientTransformation, rng: jax.Array,
                       image_size: int, path: jax.Array, method=None) -> TrainState:
    """Pure: under `jax.eval_shape` it gives the abstract state that checkpoints restore into.

    `method` (an `sdr_jax.methods.SSLMethod`) makes the method state from the initial variables.
    """
    init_rng, _ = jax.random.split(rng)  # the same init as when the state held a second key
    variables = init_variables(model, init_rng, image_size, path)
    params = variables["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      batch_stats=variables.get("batch_stats", {}), opt_state=tx.init(params),
                      method_state={} if method is None else method.init_state(variables))
