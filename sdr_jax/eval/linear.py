"""Linear probe: multinomial logistic regression on frozen features.

Features are standardised with the training set's statistics; the classifier is trained full-batch
with Adam and L2 regularisation, so the result depends only on the features and the seed.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax


@functools.partial(jax.jit, static_argnames=("num_classes", "num_steps"))
def _fit(x, y, *, num_classes: int, num_steps: int, learning_rate: float, weight_decay: float):
    params = {"w": jnp.zeros((x.shape[1], num_classes)), "b": jnp.zeros((num_classes,))}
    tx = optax.adam(learning_rate)

    def loss_fn(p):
        logits = x @ p["w"] + p["b"]
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return ce + 0.5 * weight_decay * jnp.sum(p["w"] ** 2)

    def step(carry, _):
        p, opt_state = carry
        grads = jax.grad(loss_fn)(p)
        updates, opt_state = tx.update(grads, opt_state, p)
        return (optax.apply_updates(p, updates), opt_state), None

    (params, _), _ = jax.lax.scan(step, (params, tx.init(params)), None, length=num_steps)
    return params


def linear_probe_accuracy(train_x, train_y, test_x, test_y, *, num_classes: int | None = None,
                          num_steps: int = 500, learning_rate: float = 0.1,
                          weight_decay: float = 1e-4) -> float:
    """Test accuracy (in [0, 1]) of a logistic-regression probe trained on (train_x, train_y)."""
    train_x = np.asarray(train_x, np.float32)
    test_x = np.asarray(test_x, np.float32)
    if train_x.ndim != 2 or test_x.ndim != 2 or train_x.shape[1] != test_x.shape[1]:
        raise ValueError(f"Linear probe needs 2-D features of one width, got {train_x.shape} "
                         f"and {test_x.shape}.")
    if num_classes is None:
        num_classes = int(max(np.max(train_y), np.max(test_y))) + 1
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    params = _fit(jnp.asarray((train_x - mean) / std), jnp.asarray(train_y, jnp.int32),
                  num_classes=num_classes, num_steps=num_steps, learning_rate=learning_rate,
                  weight_decay=weight_decay)
    logits = ((test_x - mean) / std) @ np.asarray(params["w"]) + np.asarray(params["b"])
    return float(np.mean(np.argmax(logits, -1) == np.asarray(test_y)))
