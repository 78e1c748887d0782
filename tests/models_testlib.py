"""Shared helpers for the model tests: tiny configs and randomised variables."""
import jax
import jax.numpy as jnp
import numpy as np

from sdr_jax.models import model_config


def tiny_config(num_groups=2, stem="small", **overrides):
    """Tiny ResNet (1 block per stage, 8..64 channels) with small heads."""
    return model_config("tiny", stem=stem, proj_dim=32, proj_layers=3, pred_dim=8,
                        sdr=dict(num_groups=num_groups, **overrides.pop("sdr", {})), **overrides)


def random_variables(model, images, path, seed=0):
    """Initialised variables with every parameter and BN statistic randomised.

    Initial values hide bugs (zero-init residual BN scales, unit running
    variances), so equality tests run on perturbed values.
    """
    variables = model.init(jax.random.key(seed), images, path, False)
    leaves, treedef = jax.tree.flatten(variables)
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    noisy = [leaf + 0.3 * jax.random.normal(k, leaf.shape) for k, leaf in zip(keys, leaves)]
    out = jax.tree.unflatten(treedef, noisy)
    out["batch_stats"] = jax.tree.map(
        lambda v, k: jax.random.uniform(k, v.shape, minval=0.5, maxval=2.0),
        variables["batch_stats"],
        jax.tree.unflatten(jax.tree.structure(variables["batch_stats"]),
                           list(jax.random.split(jax.random.key(seed + 2),
                                                 len(jax.tree.leaves(variables["batch_stats"]))))))
    return out


def images(n=4, size=16, seed=0):
    return jnp.asarray(np.random.default_rng(seed).integers(0, 256, (n, size, size, 3)), jnp.uint8)
