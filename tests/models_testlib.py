"""Shared helpers for the model tests: tiny configs and random variables.

Variables come from `jax.eval_shape(model.init)` filled with NumPy random
values: compiling `model.init` costs ~15 s on this CPU, and initial values hide
bugs anyway (zero-init residual BN scales, unit running variances).
"""
import jax
import jax.numpy as jnp
import numpy as np

from sdr_jax.models import model_config


def tiny_config(num_groups=2, stem="small", **overrides):
    """Tiny ResNet (1 block per stage, 8..64 channels) with small heads."""
    return model_config("tiny", stem=stem, proj_dim=32, proj_layers=3, pred_dim=8,
                        sdr=dict(num_groups=num_groups, **overrides.pop("sdr", {})), **overrides)


def random_variables(model, images, path, seed=0):
    """Variables of `model` with random params (fan-in scaled) and BN statistics."""
    shapes = jax.eval_shape(lambda x, p: model.init(jax.random.key(0), x, p, False), images, path)
    rng = np.random.default_rng(seed)

    def fill(keypath, leaf):
        name = jax.tree_util.keystr(keypath)
        if "kernel" in name:
            fan_in = int(np.prod(leaf.shape[:-1]))
            value = rng.normal(size=leaf.shape) / np.sqrt(fan_in)
        elif "scale" in name or "'var'" in name:
            value = rng.uniform(0.5, 1.5, size=leaf.shape)
        else:  # biases and running means
            value = 0.3 * rng.normal(size=leaf.shape)
        return jnp.asarray(value, leaf.dtype)

    return jax.tree_util.tree_map_with_path(fill, shapes)


def images(n=4, size=16, seed=0):
    return jnp.asarray(np.random.default_rng(seed).integers(0, 256, (n, size, size, 3)), jnp.uint8)


def pretrain_step_on(devices, config, state_host, batch, num_steps=10):
    """One pre-training step of `config`'s method on `devices` (the 8-vs-1 device tests), the
    views as given: the device augmentations' own layouts are tested in test_device_augment.py.
    Returns (state on the host, metrics as floats)."""
    from sdr_jax import methods, models
    from sdr_jax.core import mesh as mesh_lib
    from sdr_jax.train import optim, pretrain

    mesh = mesh_lib.make_data_mesh(devices)
    model = models.build_model(config.model, bn_axis_name=mesh_lib.DATA_AXIS)
    path = jnp.asarray(models.path_spec(config.model).full_path())
    method = methods.build(config.method, num_steps)
    tx, _ = optim.make_optimizer(config.optim, num_steps, method.predictors)
    step = pretrain.make_train_step(method, model, tx, mesh, path, aug_cfg=None)
    state, metrics = step(jax.device_put(state_host, mesh_lib.replicated(mesh)),
                          mesh_lib.shard_batch(batch, mesh))
    return jax.device_get(state), {k: float(v) for k, v in metrics.compute().items()}
