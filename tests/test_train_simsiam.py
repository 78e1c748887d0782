"""SimSiam training: distributed step vs one device, one compile, end-to-end runs, bad input."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import simsiam_mosaic
from sdr_jax import methods, models
from sdr_jax.core import mesh as mesh_lib
from sdr_jax.train import optim, pretrain, reporting
from sdr_jax.train.state import create_train_state
from tests import fixtures
from models_testlib import pretrain_step_on

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(data_dir, **train):
    config = simsiam_mosaic.get_config("tiny").unlock()
    config.data.data_dir = data_dir
    config.train.update(train)
    return config.lock()


@pytest.fixture(scope="module")
def initial(small_mosaic_dir):
    config = tiny_config(small_mosaic_dir)
    model = models.build_model(config.model)
    path = jnp.asarray(models.path_spec(config.model).full_path())
    tx, _ = optim.make_optimizer(config.optim, 10)
    state = jax.jit(lambda r: create_train_state(model, tx, r, 32, path))(jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)
    batch = {k: rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8) for k in ("view1", "view2")}
    return config, jax.device_get(state), batch


def test_eight_devices_equal_one_device_on_the_whole_batch(initial):
    config, state, batch = initial
    assert jax.device_count() == 8
    one_state, one_metrics = pretrain_step_on(jax.devices()[:1], config, state, batch)
    eight_state, eight_metrics = pretrain_step_on(jax.devices(), config, state, batch)
    assert set(eight_metrics) == set(one_metrics) == {"loss", "collapse_std", "grad_norm",
                                                      "update_norm"}
    for key in one_metrics:  # collapse_std too: the std over the global batch
        np.testing.assert_allclose(eight_metrics[key], one_metrics[key], atol=1e-5, rtol=1e-5,
                                   err_msg=key)
    assert one_metrics["grad_norm"] > 0 and one_metrics["update_norm"] > 0
    # The parameter update is -lr * (grad + momentum...): comparing the new params compares grads.
    grads_one = jax.tree.map(lambda a, b: a - b, one_state.params, state.params)
    grads_eight = jax.tree.map(lambda a, b: a - b, eight_state.params, state.params)
    for a, b in zip(jax.tree.leaves(grads_eight), jax.tree.leaves(grads_one)):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4)
    for a, b in zip(jax.tree.leaves(eight_state.batch_stats), jax.tree.leaves(one_state.batch_stats)):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4)
    # The update is not trivially zero, so the comparison means something.
    assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grads_one)) > 1e-6


def test_train_step_compiles_once(initial):
    config, state, batch = initial
    mesh = mesh_lib.make_data_mesh()
    model = models.build_model(config.model, bn_axis_name=mesh_lib.DATA_AXIS)
    tx, _ = optim.make_optimizer(config.optim, 10)
    step = pretrain.make_train_step(methods.build(config.method, 10), model, tx, mesh,
                                    jnp.asarray(models.path_spec(config.model).full_path()),
                                    aug_cfg=config.data.aug)
    state = jax.device_put(state, mesh_lib.replicated(mesh))
    for _ in range(3):
        state, _ = step(state, mesh_lib.shard_batch(batch, mesh))
    assert step._cache_size() == 1


def losses(workdir):
    return {row["step"]: row["loss"] for row in reporting.read_metrics(workdir)}


@pytest.mark.slow
def test_interrupted_run_resumes_on_the_same_trajectory(small_mosaic_dir, tmp_path):
    straight = str(tmp_path / "straight")
    result = pretrain.train_and_evaluate(tiny_config(small_mosaic_dir, log_every=1), straight)
    assert result["finished"] and set(result["knn"]) == {
        "fashion", "mnist", "animal", "emoji", "clipart", "emoji_twitter"}
    assert all(0.0 <= acc <= 1.0 for acc in result["knn"].values())

    resumed = str(tmp_path / "resumed")
    first = pretrain.train_and_evaluate(
        tiny_config(small_mosaic_dir, log_every=1, max_steps_per_run=4), resumed)
    assert not first["finished"] and first["step"] == 4
    pretrain.train_and_evaluate(tiny_config(small_mosaic_dir, log_every=1), resumed)
    want, got = losses(straight), losses(resumed)
    assert sorted(got) == sorted(want) == [1, 2, 3, 4, 5, 6]
    np.testing.assert_allclose([got[s] for s in (5, 6)], [want[s] for s in (5, 6)], atol=1e-6)


def run_cli(*args):
    env = dict(os.environ, PYTHONPATH=REPO)
    return subprocess.run([sys.executable, os.path.join(REPO, "launch/train.py"), *args],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=300)


def error_lines(stderr):
    return [line for line in stderr.splitlines() if line.startswith(("error", "FATAL", "Error"))]


@pytest.mark.slow
def test_cli_tiny_end_to_end_then_refuses_another_model(small_mosaic_dir, tmp_path):
    workdir = str(tmp_path / "run")
    out = run_cli("--config=configs/simsiam_mosaic.py:tiny", f"--workdir={workdir}",
                  f"--config.data.data_dir={small_mosaic_dir}")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "step 6/6" in out.stdout and "kNN top-1" in out.stdout
    before = sorted(os.listdir(os.path.join(workdir, "checkpoints")))

    out = run_cli("--config=configs/simsiam_mosaic.py:tiny", f"--workdir={workdir}",
                  f"--config.data.data_dir={small_mosaic_dir}", "--config.model.proj_dim=48")
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1].startswith("error: workdir")
    assert "model" in out.stderr and "proj_dim" in out.stderr
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == before
    assert json.load(open(os.path.join(workdir, "config.json")))["model"]["proj_dim"] == 32

    # Trained on 8 devices, loaded for inference by a process with one device.
    load = ("from sdr_jax.train.checkpoint import load_run; import jax; "
            f"c, v, s = load_run({workdir!r}); "
            "print(s, len(jax.devices()), jax.tree.leaves(v['params'])[0].ndim > 0)")
    env = dict(os.environ, PYTHONPATH=REPO, XLA_FLAGS=fixtures.xla_flags(1))
    out = subprocess.run([sys.executable, "-c", load], capture_output=True, text=True, env=env,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-1000:]
    assert out.stdout.split() == ["6", "1", "True"]


@pytest.mark.slow
def test_cli_unknown_config_field_fails(tmp_path):
    out = run_cli("--config=configs/simsiam_mosaic.py:tiny", f"--workdir={tmp_path}",
                  "--config.optim.no_such_field=1")
    assert out.returncode != 0
    assert "no_such_field" in out.stderr
    assert not os.listdir(tmp_path)


@pytest.mark.slow
def test_cli_non_finite_loss_stops_and_keeps_good_checkpoints(small_mosaic_dir, tmp_path):
    workdir = str(tmp_path / "nan")
    out = run_cli("--config=configs/simsiam_mosaic.py:tiny", f"--workdir={workdir}",
                  f"--config.data.data_dir={small_mosaic_dir}", "--config.optim.base_lr=1e38")
    assert out.returncode == 1, out.stdout[-1000:]
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("error: non-finite training metrics"), last
    saved = os.listdir(os.path.join(workdir, "checkpoints"))
    assert "6" not in saved


def test_plot_metrics_draws_every_logged_term(tmp_path):
    workdir = str(tmp_path)
    writer = reporting.MetricWriter(workdir)
    for step in range(1, 5):
        writer.write_scalars(step, {"loss": -step / 10, "loss_subnet": 0.0 if step < 3 else -0.1,
                                    "collapse_std": 0.04, "stage": 0 if step < 3 else 1})
    writer.close()
    keys = reporting.plot_metrics(workdir, str(tmp_path / "curves.png"))
    assert keys == ["collapse_std", "loss", "loss_subnet"]
    assert (tmp_path / "curves.png").stat().st_size > 1000
    with pytest.raises(FileNotFoundError, match="no metrics.jsonl"):
        reporting.plot_metrics(str(tmp_path / "empty"), str(tmp_path / "x.png"))


def test_metrics_survive_a_row_torn_by_a_kill(tmp_path):
    workdir = str(tmp_path)
    writer = reporting.MetricWriter(workdir)
    writer.write_scalars(1, {"loss": -0.1})
    writer.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 2, "lo')  # killed mid-write
    writer = reporting.MetricWriter(workdir)  # the resumed run
    writer.write_scalars(2, {"loss": -0.2})
    writer.close()
    rows = reporting.read_metrics(workdir)
    assert [(r["step"], r["loss"]) for r in rows] == [(1, -0.1), (2, -0.2)]
    assert reporting.plot_metrics(workdir, str(tmp_path / "curves.png")) == ["loss"]
