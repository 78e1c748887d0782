"""ResNet/SimSiam shapes, stage-wise application, MaskedBatchNorm, config errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, PartitionSpec as P

from models_testlib import images, random_variables, tiny_config
from sdr_jax.models import build_model, model_config
from sdr_jax.models.batchnorm import MaskedBatchNorm


@pytest.mark.parametrize("stem,size,spatial", [("small", 16, 2), ("imagenet", 32, 1)])
def test_output_shapes_both_stems(stem, size, spatial):
    model = build_model(tiny_config(stem=stem))
    x = images(2, size)
    path = jnp.array([0, 1, -1, 1], jnp.int32)
    variables = random_variables(model, x, path)
    out = jax.jit(lambda v, x, p: model.apply(v, x, p, False))(variables, x, path)
    assert {k: v.shape for k, v in out.items()} == {"feature": (2, 64), "z": (2, 32), "p": (2, 32)}
    h = jax.eval_shape(lambda v, x: model.apply(v, x, False, method=model.stem), variables, x)
    assert h.shape == ((2, 16, 16, 8) if stem == "small" else (2, 8, 8, 8))
    for s in range(4):
        h = jax.eval_shape(lambda v, h: model.apply(v, h, s, path[s], False, method=model.stage),
                           variables, h)
    assert h.shape[1:3] == (spatial, spatial)
    assert jax.tree.map(lambda a: a.dtype, variables["params"]) == jax.tree.map(
        lambda a: jnp.float32, variables["params"])


def test_stage_wise_application_equals_whole_forward():
    model = build_model(tiny_config(num_groups=2))
    x = images()
    path = jnp.array([1, -1, 0, 1], jnp.int32)
    variables = random_variables(model, x, path)
    whole = jax.jit(lambda v, x, p: model.apply(v, x, p, False))(variables, x, path)

    @jax.jit
    def stage_wise(variables, x, path):
        h = model.apply(variables, x, method=model.stem)
        for s in range(4):
            h = model.apply(variables, h, s, path[s], method=model.stage)
        feature = model.apply(variables, h, method=model.pool)
        return feature, model.apply(variables, feature, method=model.heads)["p"]

    feature, p = stage_wise(variables, x, path)
    np.testing.assert_allclose(feature, whole["feature"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(p, whole["p"], rtol=1e-5, atol=1e-5)


def test_bottleneck_and_bfloat16():
    model = build_model(model_config("tiny_bottleneck", stem="small", proj_dim=32, pred_dim=8,
                                     dtype="bfloat16", sdr=dict(num_groups=2)))
    x = images(2)
    path = jnp.array([0, 1, 1, 0], jnp.int32)
    variables = random_variables(model, x, path)
    out, _ = jax.jit(lambda v, x, p: model.apply(v, x, p, True, mutable=["batch_stats"]))(variables, x, path)
    assert out["feature"].shape == (2, 256) and out["z"].dtype == jnp.bfloat16
    assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(variables))
    # Group 1 of the last block (128 shared, groups of 64) is inactive: exactly zero.
    assert np.all(np.asarray(out["feature"][:, 192:], np.float32) == 0)


def _bn_reference(x, momentum=0.9, eps=1e-5):
    mean, var = x.mean(0), x.var(0)
    return (x - mean) / np.sqrt(var + eps), momentum * 0 + (1 - momentum) * mean, momentum + (1 - momentum) * var


def test_masked_bn_matches_numpy_and_ignores_inactive_channels():
    rng = np.random.default_rng(0)
    x = rng.normal(2.0, 3.0, size=(32, 6)).astype(np.float32)
    mask = jnp.array([1, 1, 0, 1, 0, 1], bool)
    bn = MaskedBatchNorm()
    variables = bn.init(jax.random.key(0), x, mask, False)
    y, state = bn.apply(variables, x, mask, False, mutable=["batch_stats"])
    want_y, want_mean, want_var = _bn_reference(x)
    np.testing.assert_allclose(y, want_y, rtol=1e-5, atol=1e-5)
    active = np.asarray(mask)
    np.testing.assert_allclose(state["batch_stats"]["mean"][active], want_mean[active], rtol=1e-5)
    np.testing.assert_allclose(state["batch_stats"]["var"][active], want_var[active], rtol=1e-5)
    # Inactive channels' running statistics are untouched (init values 0 and 1).
    np.testing.assert_array_equal(state["batch_stats"]["mean"][~active], 0.0)
    np.testing.assert_array_equal(state["batch_stats"]["var"][~active], 1.0)
    # Changing the inactive channels changes nothing on the active ones.
    x2 = x.copy()
    x2[:, ~active] = rng.normal(-50, 40, size=(32, 2))
    y2, state2 = bn.apply(variables, x2, mask, False, mutable=["batch_stats"])
    np.testing.assert_array_equal(np.asarray(y2)[:, active], np.asarray(y)[:, active])
    for key in ("mean", "var"):
        np.testing.assert_array_equal(state2["batch_stats"][key], state["batch_stats"][key])


def _sharded_bn(mask_per_device, x, variables, sync):
    mesh = Mesh(np.array(jax.devices()[:8]), ("batch",))
    bn = MaskedBatchNorm(axis_name="batch", sync_stats=sync)

    def step(variables, x, mask):
        y, state = bn.apply(variables, x, mask[0], False, mutable=["batch_stats"])
        return y, state["batch_stats"]

    return jax.jit(jax.shard_map(step, mesh=mesh, in_specs=(P(), P("batch"), P("batch")),
                                 out_specs=(P("batch"), P())))(variables, x, mask_per_device)


def test_sync_bn_in_shard_map_equals_one_device_on_the_whole_batch():
    assert len(jax.devices()) >= 8
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(1.0, 2.0, size=(8 * 4, 5, 5, 6)), jnp.float32)
    bn = MaskedBatchNorm()
    variables = bn.init(jax.random.key(0), x, None, False)
    want_y, want_state = bn.apply(variables, x, None, False, mutable=["batch_stats"])
    y, stats = _sharded_bn(jnp.ones((8, 6), bool), x, variables, sync=True)
    np.testing.assert_allclose(y, want_y, rtol=1e-5, atol=1e-5)
    for key in ("mean", "var"):
        np.testing.assert_allclose(stats[key], want_state["batch_stats"][key], rtol=1e-5)

    # Gradients too (the psum transposes correctly inside shard_map).
    def loss_one(x):
        return jnp.sum(jnp.sin(bn.apply(variables, x, None, False, mutable=["batch_stats"])[0]))

    def loss_sharded(x):
        return jnp.sum(jnp.sin(_sharded_bn(jnp.ones((8, 6), bool), x, variables, True)[0]))

    np.testing.assert_allclose(jax.grad(loss_sharded)(x), jax.grad(loss_one)(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("sync", [True, False])
def test_devices_on_different_paths_update_running_stats_alike(sync):
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.normal(size=(8 * 4, 3)) * np.arange(1, 9).repeat(4)[:, None], jnp.float32)
    bn = MaskedBatchNorm()
    variables = bn.init(jax.random.key(0), x, None, False)
    # Channel 0 active everywhere, channel 1 on devices 0-2, channel 2 nowhere.
    masks = np.zeros((8, 3), bool)
    masks[:, 0] = True
    masks[:3, 1] = True
    y, stats = _sharded_bn(jnp.asarray(masks), x, variables, sync)
    xs = np.asarray(x).reshape(8, 4, 3)
    if sync:  # pooled over the devices where the channel is active
        mean1 = xs[:3, :, 1].mean()
        var1 = xs[:3, :, 1].var()
    else:  # mean over those devices of their local statistics
        mean1 = xs[:3, :, 1].mean(1).mean()
        var1 = xs[:3, :, 1].var(1).mean()
    np.testing.assert_allclose(stats["mean"][1], 0.1 * mean1, rtol=1e-5)
    np.testing.assert_allclose(stats["var"][1], 0.9 + 0.1 * var1, rtol=1e-5)
    np.testing.assert_array_equal(stats["mean"][2], 0.0)
    np.testing.assert_array_equal(stats["var"][2], 1.0)
    if sync:  # channel 1 on device 0 is normalised with the 3-device statistics
        np.testing.assert_allclose(y[:4, 1], (xs[0, :, 1] - mean1) / np.sqrt(var1 + 1e-5), rtol=1e-4)


@pytest.mark.parametrize("kwargs,match", [
    (dict(sdr=dict(num_groups=3)), r"SDR stage 0 \(8 channels\).*3 groups"),
    (dict(sdr=dict(num_paths=17, num_groups=2)), "num_paths=17 but 2 groups x 4 SDR blocks give 16"),
    (dict(sdr=dict(stages=(2, 4))), "name a stage the network does not have"),
    (dict(sdr=dict(stages=(2, 1))), "distinct increasing"),
    (dict(stem="huge"), "stem must be"),
    (dict(dtype="float16"), "dtype must be one of"),
])
def test_bad_configs_fail_at_build_time(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_model(model_config("tiny", **kwargs))


def test_unknown_config_fields_and_arch():
    with pytest.raises(ValueError, match="Unknown field model.sdr.groups"):
        model_config("tiny", sdr=dict(groups=2))
    with pytest.raises(ValueError, match="Unknown arch"):
        model_config("resnet7")


def test_bad_forward_inputs():
    model = build_model(tiny_config())
    x = images(2)
    variables = random_variables(model, x, jnp.zeros(4, jnp.int32))
    with pytest.raises(ValueError, match=r"path must have shape \(4,\)"):
        model.apply(variables, x, jnp.zeros(3, jnp.int32), False)
    with pytest.raises(ValueError, match="RGB"):
        model.apply(variables, x[..., :1], jnp.zeros(4, jnp.int32), False)


def test_plain_simsiam_has_no_masks():
    cfg = tiny_config(num_groups=0)
    model = build_model(cfg)
    assert model.sdr is None
    x = images(2)
    variables = random_variables(model, x, None)
    out = jax.jit(lambda v, x: model.apply(v, x, None, False))(variables, x)
    assert out["feature"].shape == (2, 64) and "stages_0" in variables["params"]["backbone"]
