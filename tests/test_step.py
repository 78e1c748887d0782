"""The step skeleton (global gradient, norms, after-update hook), the method registry and the
optimiser's fixed-lr predictors."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import pipeline_mosaic, simsiam_mosaic
from sdr_jax import config_base, methods
from sdr_jax.core import mesh as mesh_lib
from sdr_jax.core.errors import ConfigError
from sdr_jax.train import optim
from sdr_jax.train import step as step_lib
from sdr_jax.train.state import TrainState

Metrics = step_lib.metrics_collection("residual")


def linear_loss(params, state, batch):
    residual = batch["x"] @ params["w"] - batch["y"]
    values = {"residual": jax.lax.pmean(jnp.mean(jnp.abs(residual)), "data")}
    return jnp.mean(residual ** 2), (state.batch_stats, state.method_state, values)


@pytest.mark.parametrize("num_devices", [1, 8])
def test_gradient_is_the_global_batch_gradient_and_its_norms_are_reported(num_devices):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 3)).astype(np.float32)
    y = rng.normal(size=(16,)).astype(np.float32)
    w = rng.normal(size=(3,)).astype(np.float32)
    tx = optax.sgd(0.1)
    mesh = mesh_lib.make_data_mesh(jax.devices()[:num_devices])
    def count_updates(s):  # the hook sees the state before the step count moves on
        return s.replace(method_state={"n": s.method_state["n"] + 1 + s.step})
    step = step_lib.make_step(linear_loss, tx, mesh, metrics=Metrics, after_update=count_updates)
    state = TrainState(step=jnp.int32(0), params={"w": w}, batch_stats={},
                       opt_state=tx.init({"w": w}), method_state={"n": jnp.int32(0)})
    state = jax.device_put(state, mesh_lib.replicated(mesh))
    new, metrics = step(state, mesh_lib.shard_batch({"x": x, "y": y}, mesh))
    values = {k: float(v) for k, v in metrics.compute().items()}

    grad = 2 / 16 * x.T @ (x @ w - y)  # the whole batch's gradient, whatever the device count
    np.testing.assert_allclose(new.params["w"], w - 0.1 * grad, rtol=1e-5)
    np.testing.assert_allclose(values["loss"], np.mean((x @ w - y) ** 2), rtol=1e-5)
    np.testing.assert_allclose(values["grad_norm"], np.linalg.norm(grad), rtol=1e-5)
    np.testing.assert_allclose(values["update_norm"], 0.1 * np.linalg.norm(grad), rtol=1e-5)
    np.testing.assert_allclose(values["residual"], np.mean(np.abs(x @ w - y)), rtol=1e-5)
    assert int(new.step) == 1 and int(new.method_state["n"]) == 1  # the hook saw step 0
    assert step._cache_size() == 1


def test_methods_are_found_by_name_and_an_unknown_one_is_one_line():
    known = methods.names()  # every module of sdr_jax/methods/ but distill: no list to edit
    assert {"byol", "simsiam"} <= set(known) and "distill" not in known
    assert all(methods.method_class(name).name == name for name in known)
    with pytest.raises(ConfigError, match=rf"^method.name='nope'; known methods: "
                                          rf"{', '.join(known)}\.$"):
        methods.method_class("nope")
    config = simsiam_mosaic.get_config("tiny")
    assert config.method.name == "simsiam" and config.optim.fix_pred_lr
    byol_config = config_base.use_method(config.copy_and_resolve_references(), "byol")
    assert byol_config.method.to_dict() == {"name": "byol"}  # inert: defaults come at build
    assert methods.build(byol_config.method, 10).config.to_dict() == {"name": "byol",
                                                                      "base_momentum": 0.99}
    assert methods.method_class("byol").predictors == ()  # fix_pred_lr keeps nothing fixed
    bad = config_base.use_method(byol_config.unlock(), "simsiam", base_momentum=0.99)
    with pytest.raises(ConfigError,
                       match=r"method 'simsiam' has no field\(s\) \['base_momentum'\]"):
        methods.build(bad.method, 10)


def test_pipeline_method_switches_pretraining_and_sdr():
    from sdr_jax.jobs import pipeline
    config = pipeline_mosaic.get_config("tiny").unlock()
    config.method = "byol"
    stages = pipeline.stage_configs(config, "/tmp/unused")
    for name in ("simsiam", "sdr"):
        assert stages[name].method.name == "byol"  # (BYOL keeps no module at a fixed lr)
    assert config.simsiam.method.name == "simsiam"  # the pipeline's own config is left alone
    config.method = "nope"
    with pytest.raises(ConfigError, match="known methods: .*byol.*simsiam"):
        pipeline.check_config(config)


def test_fix_pred_lr_keeps_exactly_the_predictor_at_the_peak_lr():
    config = simsiam_mosaic.get_config("tiny").optim
    params = {name: {"kernel": jnp.ones((2,))}
              for name in ("backbone", "projector", "predictor", "kd_predictor")}
    tx, schedule = optim.make_optimizer(config, 10, ("predictor",))
    opt_state = tx.init(params)
    grads = jax.tree.map(jnp.ones_like, params)
    for _ in range(6):  # late in the cosine schedule: the lrs differ
        updates, opt_state = tx.update(grads, opt_state, params)
    sgd = optax.sgd(1.0, momentum=config.momentum)
    scale, sgd_state = None, sgd.init(jnp.zeros(()))
    for _ in range(6):  # what momentum makes of a constant gradient of (1 + wd)
        scale, sgd_state = sgd.update(jnp.float32(1 + config.weight_decay), sgd_state)
    peak = optim.peak_learning_rate(config)
    np.testing.assert_allclose(updates["predictor"]["kernel"], peak * scale, rtol=1e-5)
    for name in ("backbone", "projector", "kd_predictor"):  # the SiamKD head is not SimSiam's h
        assert abs(float(updates[name]["kernel"][0])) < abs(float(peak * scale)) * 0.99, name
    assert float(schedule(5)) < peak


def test_lars_leaves_biases_and_batch_norm_alone():
    config = simsiam_mosaic.get_config("tiny").unlock()
    config.optim.optimizer, config.optim.fix_pred_lr = "lars", False
    config.optim.weight_decay = 0.1
    tx, schedule = optim.make_optimizer(config.optim, 10)
    kernel, bias = jnp.full((2, 2), 3.0), jnp.ones((2,))
    params = {"backbone": {"kernel": kernel, "bias": bias}}
    grads = {"backbone": {"kernel": jnp.ones((2, 2)), "bias": jnp.full((2,), 0.5)}}
    updates, _ = tx.update(grads, tx.init(params), params)
    lr = float(schedule(0))
    np.testing.assert_allclose(updates["backbone"]["bias"], -lr * 0.5, rtol=1e-6)  # plain SGD
    decayed = 1.0 + 0.1 * 3.0  # the kernel: weight decay, then the trust ratio |w| / |g + wd w|
    trust = 0.001 * np.linalg.norm(np.full((2, 2), 3.0)) / np.linalg.norm(np.full((2, 2), decayed))
    np.testing.assert_allclose(updates["backbone"]["kernel"], -lr * trust * decayed, rtol=1e-5)
    config.optim.optimizer = "adam"
    with pytest.raises(ConfigError, match="optim.optimizer='adam'; choose one of sgd, lars"):
        optim.make_optimizer(config.optim, 10)
