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
    rng: jax.Array  # a raw uint32[2] key: per-step randomness is fold_in(rng, step)


def init_variables(model: nn.Module, rng: jax.Array, image_size: int, path: jax.Array) -> dict:
    images = jnp.zeros((2, image_size, image_size, 3), jnp.uint8)
    return model.init(rng, images, path, train=False)


def create_train_state(model: nn.Module, tx: optax.GradientTransformation, rng: jax.Array,
                       image_size: int, path: jax.Array) -> TrainState:
    """Pure: under `jax.eval_shape` it gives the abstract state that checkpoints restore into."""
    init_rng, state_rng = jax.random.split(rng)
    variables = init_variables(model, init_rng, image_size, path)
    params = variables["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      batch_stats=variables.get("batch_stats", {}), opt_state=tx.init(params),
                      rng=state_rng)
