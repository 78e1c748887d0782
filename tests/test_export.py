"""Compact sub-net export equals the masked SDRnet; BN recalibration; inspect CLI."""
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models_testlib import images, random_variables, tiny_config
from sdr_jax.core import paths
from sdr_jax.models import build_model, model_config, path_spec, sdr_layout
from sdr_jax.models.export import export_subnet, recalibrate_bn
from tests import fixtures

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from configs import sdr256  # noqa: E402  (configs/ is not a package on the path)


def _check_export(cfg, paths_to_check, size=16):
    model = build_model(cfg)
    x = images(4, size)
    variables = random_variables(model, x, path_spec(cfg).full_path())
    masked = jax.jit(lambda v, x, p: model.apply(v, x, p, False))
    last = sdr_layout(cfg).layout(3, 64 * model.backbone.block_cls.expansion)
    for path in paths_to_check:
        want = masked(variables, x, jnp.asarray(path))
        compact, compact_vars = export_subnet(cfg, variables, path)
        got = compact.apply(compact_vars, x, None, False)
        active = paths.active_channels(last, int(path[-1]))
        unused = np.setdiff1d(np.arange(last.channels), active)
        assert got["feature"].shape == (4, active.size)
        np.testing.assert_allclose(got["feature"], np.asarray(want["feature"])[:, active], rtol=1e-5, atol=1e-5)
        assert np.all(np.asarray(want["feature"])[:, unused] == 0)
        for key in ("z", "p"):
            np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-5)
        n_compact = sum(a.size for a in jax.tree.leaves(compact_vars["params"]))
        n_full = sum(a.size for a in jax.tree.leaves(variables["params"]))
        assert n_compact < n_full or (np.asarray(path) == paths.ALL).all()


def test_every_path_of_a_small_config_exports_exactly():
    cfg = tiny_config(num_groups=2)
    spec = path_spec(cfg)
    every = np.concatenate([spec.stage_paths(s) for s in range(spec.max_stage + 1)])
    assert len(every) == 1 + 2 + 4 + 8 + 16
    _check_export(cfg, every)


def test_sample_of_the_256_path_config_exports_exactly():
    cfg = sdr256.get_config("tiny").model
    spec = path_spec(cfg)
    assert spec.num_paths == 256
    rng = np.random.default_rng(0)
    sample = spec.all_paths()[rng.choice(256, 6, replace=False)]
    _check_export(cfg, np.concatenate([sample, spec.stage_paths(2)[:1], [[2, paths.ALL, 1, 3]]]), size=32)


def test_bottleneck_paths_export_exactly():
    cfg = model_config("tiny_bottleneck", stem="small", proj_dim=32, pred_dim=8, sdr=dict(num_groups=4))
    _check_export(cfg, [[0, 1, 2, 3], [3, 0, paths.ALL, 1], [paths.ALL] * 3 + [2]])


def test_export_rejects_bad_paths():
    cfg = tiny_config(num_groups=2)
    model = build_model(cfg)
    variables = random_variables(model, images(2), jnp.zeros(4, jnp.int32))
    with pytest.raises(ValueError, match=r"shape \(\.\.\., 4\)"):
        export_subnet(cfg, variables, [0, 1])
    with pytest.raises(ValueError, match="entries must be in"):
        export_subnet(cfg, variables, [0, 1, 2, 0])


def _recalibration_setup():
    cfg = tiny_config(num_groups=2)
    model = build_model(cfg)
    path = jnp.array([1, 0, 1, 1], jnp.int32)
    variables = random_variables(model, images(8), path)
    return model, variables, path


def test_recalibrated_eval_equals_train_mode_on_that_batch():
    model, variables, path = _recalibration_setup()
    x = images(8, seed=5)
    fresh = recalibrate_bn(model, variables, path, [x])
    train_out, _ = jax.jit(lambda v, x, p: model.apply(v, x, p, True, mutable=["batch_stats"]))(
        variables, x, path)
    eval_out = jax.jit(lambda v, x, p: model.apply(v, x, p, False))(fresh, x, path)
    before = jax.jit(lambda v, x, p: model.apply(v, x, p, False))(variables, x, path)
    for key in ("feature", "z", "p"):
        np.testing.assert_allclose(eval_out[key], train_out[key], rtol=1e-4, atol=1e-4)
    assert not np.allclose(before["p"], train_out["p"], atol=1e-3)
    # Channels the path does not use keep their statistics bit for bit.
    old = variables["batch_stats"]["backbone"]["stages_3"]["block_0"]["bn1"]
    new = fresh["batch_stats"]["backbone"]["stages_3"]["block_0"]["bn1"]
    used = np.r_[0:32, 48:64]  # 32 shared + group 1; group 0 (32:48) unused
    for key in ("mean", "var"):
        np.testing.assert_array_equal(new[key][32:48], old[key][32:48])
        assert not np.any(new[key][used] == old[key][used])


def test_recalibration_pools_batches_exactly():
    model, variables, path = _recalibration_setup()
    b1, b2 = images(8, seed=6), images(4, seed=7)
    both = recalibrate_bn(model, variables, path, [b1, b2])
    one = [recalibrate_bn(model, variables, path, [b]) for b in (b1, b2)]
    w = np.array([8, 4]) / 12
    for layer in ("bn_0", "bn_1", "bn_2"):
        m = [o["batch_stats"]["projector"][layer]["mean"] for o in one]
        v = [o["batch_stats"]["projector"][layer]["var"] for o in one]
        mean = w[0] * m[0] + w[1] * m[1]
        var = w[0] * (v[0] + (m[0] - mean) ** 2) + w[1] * (v[1] + (m[1] - mean) ** 2)
        np.testing.assert_allclose(both["batch_stats"]["projector"][layer]["mean"], mean, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(both["batch_stats"]["projector"][layer]["var"], var, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="at least one batch"):
        recalibrate_bn(model, variables, path, [])


@pytest.mark.slow
def test_inspect_cli_runs_on_the_tiny_config():
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=fixtures.xla_flags(1))
    out = subprocess.run([sys.executable, "launch/describe.py", "--config=configs/sdr256.py:tiny"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    text = out.stdout
    assert "paths: 256" in text and "image size: 32" in text
    assert "stage 0: 8 channels = 4 shared + 4 groups x 1" in text
    assert "sub-net" in text and "FLOPs" in text
