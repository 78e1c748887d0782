"""BYOL: loss, EMA and momentum schedule against NumPy; 8 devices == 1; resume bit-exact; SDR
over BYOL at :tiny with one compile per step function."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import byol_mosaic, sdr_mosaic
from sdr_jax import methods, models
from sdr_jax.methods import byol
from sdr_jax.train import checkpoint, optim, pretrain, reporting, sdr
from sdr_jax.train.state import create_train_state
from models_testlib import pretrain_step_on


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_loss_against_numpy_and_no_gradient_into_the_target():
    rng = np.random.default_rng(0)
    p1, p2, t1, t2 = (rng.normal(size=(6, 5)).astype(np.float32) for _ in range(4))
    want = (np.mean(np.sum((unit(p1) - unit(t2)) ** 2, -1))
            + np.mean(np.sum((unit(p2) - unit(t1)) ** 2, -1)))
    np.testing.assert_allclose(byol.byol_loss(p1, p2, t1, t2), want, rtol=1e-5)
    np.testing.assert_allclose(byol.byol_loss(t2, t1, t1, t2), 0.0, atol=1e-6)  # p == target
    grads = jax.grad(byol.byol_loss, argnums=(0, 1, 2, 3))(p1, p2, t1, t2)
    assert np.abs(grads[0]).max() > 0 and np.abs(grads[1]).max() > 0
    assert np.abs(grads[2]).max() == 0 and np.abs(grads[3]).max() == 0


def test_momentum_schedule_values():
    values = [float(byol.target_momentum(k, 100, 0.99)) for k in (0, 25, 50, 100, 150)]
    np.testing.assert_allclose(values, [0.99, 1 - 0.01 * (np.cos(np.pi / 4) + 1) / 2, 0.995,
                                        1.0, 1.0], rtol=0, atol=1e-7)
    steps = np.arange(100)
    taus = np.asarray(byol.target_momentum(steps, 100, 0.996))
    assert taus[0] == np.float32(0.996) and np.all(np.diff(taus) >= 0)


def test_ema_against_numpy():
    rng = np.random.default_rng(1)
    target = {"a": rng.normal(size=(3, 4)).astype(np.float32), "b": {"c": np.float32([1, 2])}}
    online = jax.tree.map(lambda x: x + rng.normal(size=x.shape).astype(np.float32), target)
    method = methods.build(byol_mosaic.get_config().method, 100)
    state = {"params": target, "batch_stats": {"x": np.float32([3.0])}}
    new = method.after_update(state, online, jnp.int32(25))
    tau = 1 - 0.01 * (np.cos(np.pi / 4) + 1) / 2
    jax.tree.map(lambda got, t, o: np.testing.assert_allclose(got, tau * t + (1 - tau) * o,
                                                              rtol=1e-6),
                 new["params"], target, online)
    assert new["batch_stats"] is state["batch_stats"]  # the target's BN stats are its own


def tiny_config(data_dir, **train):
    config = byol_mosaic.get_config("tiny").unlock()
    config.data.data_dir = data_dir
    config.eval.knn_tasks = ()
    config.train.update(train)
    return config.lock()


def test_eight_devices_equal_one_device_and_the_target_is_the_ema(small_mosaic_dir):
    config = tiny_config(small_mosaic_dir)
    assert config.method.name == "byol" and not config.optim.fix_pred_lr
    model = models.build_model(config.model)
    path = jnp.asarray(models.path_spec(config.model).full_path())
    method = methods.build(config.method, 10)
    tx, _ = optim.make_optimizer(config.optim, 10, method.predictors)
    state = jax.device_get(jax.jit(lambda r: create_train_state(model, tx, r, 32, path, method))(
        jax.random.PRNGKey(0)))
    jax.tree.map(np.testing.assert_array_equal, state.method_state["params"], state.params)
    rng = np.random.default_rng(0)
    batch = {k: rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8) for k in ("view1", "view2")}

    one_state, one = pretrain_step_on(jax.devices()[:1], config, state, batch)
    eight_state, eight = pretrain_step_on(jax.devices(), config, state, batch)
    assert set(one) == set(eight) == {"loss", "collapse_std", "grad_norm", "update_norm"}
    for key in one:
        np.testing.assert_allclose(eight[key], one[key], atol=1e-5, rtol=1e-5, err_msg=key)
    assert 0 < one["loss"] < 8
    for a, b in zip(jax.tree.leaves(eight_state), jax.tree.leaves(one_state), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4)
    # Step 0: the target moved by (1 - 0.99) of the way to the new online weights.
    moved = jax.tree.map(lambda t, o: 0.99 * t + 0.01 * o, state.method_state["params"],
                         one_state.params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-7, rtol=1e-6),
                 one_state.method_state["params"], moved)
    # The target's BN statistics were updated by its own passes (not copied from the online).
    changed = [not np.array_equal(a, b) for a, b in zip(
        jax.tree.leaves(one_state.method_state["batch_stats"]),
        jax.tree.leaves(state.method_state["batch_stats"]))]
    assert any(changed)


def test_interrupted_run_resumes_bit_exact_with_the_target(small_mosaic_dir, tmp_path):
    straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
    result = pretrain.train_and_evaluate(tiny_config(small_mosaic_dir, log_every=1), straight)
    assert result["finished"]
    first = pretrain.train_and_evaluate(tiny_config(small_mosaic_dir, log_every=1,
                                                    max_steps_per_run=4), resumed)
    assert not first["finished"] and first["step"] == 4
    pretrain.train_and_evaluate(tiny_config(small_mosaic_dir, log_every=1), resumed)
    rows = {w: {r["step"]: r for r in reporting.read_metrics(w)} for w in (straight, resumed)}
    assert [rows[straight][s]["target_momentum"] for s in (1, 6)] == pytest.approx(
        [0.99, 1 - 0.01 * (np.cos(np.pi * 5 / 6) + 1) / 2])
    trainer = pretrain.PretrainTrainer(tiny_config(small_mosaic_dir), straight)
    states = []
    for workdir in (straight, resumed):
        checkpointer = checkpoint.Checkpointer(workdir)
        states.append(checkpointer.restore(trainer.abstract_state())[0])
        checkpointer.close()
    assert int(states[0].step) == int(states[1].step) == 6
    for a, b in zip(jax.tree.leaves(states[0]), jax.tree.leaves(states[1]), strict=True):
        np.testing.assert_array_equal(a, b)
    assert jax.tree.leaves(states[0].method_state)  # the target was saved and restored


def test_sdr_over_byol_trains_at_tiny_with_one_compile_per_step_function(small_mosaic_dir,
                                                                         tmp_path):
    from tests.test_train_sdr import make_assignments
    from sdr_jax.data import datasets, sdr_batches
    ids = sdr_batches.record_ids(datasets.open_source("mosaic/small", "pool", small_mosaic_dir))
    assignments = str(tmp_path / "assignments.npz")
    make_assignments(ids).save(assignments)
    config = sdr_mosaic.get_config("tiny,method=byol").unlock()
    config.data.data_dir = small_mosaic_dir
    config.sdr.assignments = assignments
    config.train.num_steps = 4
    # The SDRnet alone (stage 0), then the whole 16-path space (stage 4): every step function
    # kind, with two compiles instead of five (every stage: tests/test_compact.py).
    config.sdr.stage_fractions = (0.5, 0.0, 0.0, 0.0, 0.5)
    config.eval.knn_tasks = ()
    trainer = sdr.SDRTrainer(config.lock(), str(tmp_path / "run"))
    assert trainer.method.name == "byol"
    state = trainer.init_state()
    data = trainer.make_data(0, None)
    step_fn = trainer.make_step_fn()
    stages, losses = [], []
    for step in range(1, 5):
        state, metrics = step_fn(state, next(data))
        values = {k: float(v) for k, v in metrics.compute().items()}
        stages.append(trainer.schedule.stage_at(step))
        losses.append(values)
    assert stages == [0, 0, 4, 4]
    # compact sub-nets (the default): one step function per progressive stage, compiled once
    # if the stage has steps
    assert {k: f._cache_size() for k, f in trainer.step_functions.items()} == {
        0: 1, 1: 0, 2: 0, 3: 0, 4: 1}
    assert all(np.isfinite(v) for row in losses for v in row.values())
    assert losses[0]["loss_subnet"] == 0 and losses[-1]["loss_subnet"] > 0  # BYOL: in [0, 8]
    assert losses[-1]["loss_kd"] != 0 and losses[-1]["grad_norm"] > 0
    # The target tracks the online network (EMA), so it is neither the init nor the online.
    online, target = jax.tree.leaves(state.params), jax.tree.leaves(state.method_state["params"])
    assert any(not np.array_equal(a, b) for a, b in zip(online, target))


def test_a_workdir_of_another_method_is_refused_before_restoring(tmp_path):
    from configs import simsiam_mosaic
    checkpoint.check_workdir_config(str(tmp_path), simsiam_mosaic.get_config("tiny"))
    (tmp_path / checkpoint.CHECKPOINT_DIR / "3").mkdir(parents=True)
    with pytest.raises(checkpoint.CheckpointError,
                       match="holds a run of method 'simsiam', not 'byol'"):
        checkpoint.check_workdir_config(str(tmp_path), byol_mosaic.get_config("tiny"))
