"""The masked SDRnet: one compile for every path, gradients confined to the path."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, PartitionSpec as P

from models_testlib import images, random_variables, tiny_config
from sdr_jax.core import paths
from sdr_jax.methods.simsiam import simsiam_loss
from sdr_jax.models import build_model, path_spec, sdr_layout

CFG = tiny_config(num_groups=2)
MODEL = build_model(CFG)
SPEC = path_spec(CFG)


def _some_paths(n=12, seed=0):
    rng = np.random.default_rng(seed)
    full = SPEC.all_paths()[rng.choice(SPEC.num_paths, n - 3, replace=False)]
    return np.concatenate([full, SPEC.stage_paths(1)[:2], SPEC.stage_paths(0)])


def _loss(params, batch_stats, x1, x2, path):
    variables = {"params": params, "batch_stats": batch_stats}
    o1, state = MODEL.apply(variables, x1, path, True, mutable=["batch_stats"])
    o2, state = MODEL.apply({"params": params, **state}, x2, path, True, mutable=["batch_stats"])
    return simsiam_loss(o1["p"], o2["p"], o1["z"], o2["z"]), state["batch_stats"]


def test_switching_paths_never_recompiles():
    x1, x2 = images(4, seed=1), images(4, seed=2)
    variables = random_variables(MODEL, x1, jnp.zeros(4, jnp.int32))
    tx = optax.sgd(0.1, momentum=0.9)
    traces = {"forward": 0, "step": 0}

    @jax.jit
    def forward(variables, x, path):
        traces["forward"] += 1
        return MODEL.apply(variables, x, path, False)["feature"]

    @jax.jit
    def step(params, batch_stats, opt_state, path):
        traces["step"] += 1
        (loss, batch_stats), grads = jax.value_and_grad(_loss, has_aux=True)(
            params, batch_stats, x1, x2, path)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), batch_stats, opt_state, loss

    params, batch_stats = variables["params"], variables["batch_stats"]
    opt_state = tx.init(params)
    features = []
    for path in _some_paths():
        features.append(np.asarray(forward(variables, x1, jnp.asarray(path))))
        params, batch_stats, opt_state, loss = step(params, batch_stats, opt_state, jnp.asarray(path))
        assert np.isfinite(loss)
    assert traces == {"forward": 1, "step": 1}
    assert forward._cache_size() == 1 and step._cache_size() == 1
    # The path really is data: different paths give different features.
    assert len({f.tobytes() for f in features}) == len(features)


def test_gradients_outside_the_path_are_exactly_zero():
    x1, x2 = images(4, seed=3), images(4, seed=4)
    path = np.array([1, 0, 1, 0], np.int32)
    variables = random_variables(MODEL, x1, jnp.asarray(path))
    grads, _ = jax.jit(jax.grad(_loss, has_aux=True))(
        variables["params"], variables["batch_stats"], x1, x2, jnp.asarray(path))
    layout = sdr_layout(CFG)
    prev_inactive = np.zeros(8, bool)  # stem output: all channels used
    for s in range(4):
        lay = layout.layout(s, 8 * 2**s)
        inactive = ~np.isin(np.arange(lay.channels), paths.active_channels(lay, int(path[s])))
        block = grads["backbone"][f"stages_{s}"]["block_0"]
        k1, k2 = np.asarray(block["conv1"]["kernel"]), np.asarray(block["conv2"]["kernel"])
        # Output columns of unused channels and input rows of unused channels.
        assert np.all(k1[..., inactive] == 0) and np.all(k2[..., inactive] == 0)
        assert np.all(k1[..., prev_inactive, :] == 0) and np.all(k2[..., inactive, :] == 0)
        for bn in ("bn1", "bn2"):
            for leaf in ("scale", "bias"):
                g = np.asarray(block[bn][leaf])
                assert np.all(g[inactive] == 0) and np.any(g[~inactive] != 0)
        if "proj_conv" in block:
            assert np.all(np.asarray(block["proj_conv"]["kernel"])[..., inactive] == 0)
            assert np.all(np.asarray(block["proj_conv"]["kernel"])[..., prev_inactive, :] == 0)
        # Used weights do get gradient.
        assert np.any(k1[..., ~inactive] != 0)
        prev_inactive = inactive
    dense0 = np.asarray(grads["projector"]["dense_0"]["kernel"])
    assert np.all(dense0[prev_inactive] == 0) and np.any(dense0[~prev_inactive] != 0)


def test_paths_of_every_stage_drive_one_jitted_forward():
    x = images(4)
    variables = random_variables(MODEL, x, jnp.zeros(4, jnp.int32))
    traces = []

    @jax.jit
    def features(variables, path):
        traces.append(1)
        return MODEL.apply(variables, x, path, False)["feature"]

    rng = np.random.default_rng(0)
    for stage in range(SPEC.max_stage + 1):
        space = SPEC.stage_paths(stage)
        path = space[rng.integers(len(space))]
        feature = features(variables, jnp.asarray(path))
        assert SPEC.stage_of(path) == stage
        # The last block's unused group is exactly zero (stage 0: nothing unused).
        unused = (feature == 0).all(0)
        assert int(unused.sum()) >= (0 if stage == 0 else 16)
    assert len(traces) == 1


def _spmd_forward(model, variables, x, device_paths):
    mesh = Mesh(np.array(jax.devices()[:8]), ("batch",))

    def forward(variables, x, path):
        out, state = model.apply(variables, x, path[0], True, mutable=["batch_stats"])
        return out["feature"], state["batch_stats"]

    # out_specs P() for the running stats: check_vma proves they are replicated.
    return jax.jit(jax.shard_map(forward, mesh=mesh, in_specs=(P(), P("batch"), P("batch")),
                                 out_specs=(P("batch"), P())))(variables, x, device_paths)


def test_sync_bn_model_in_shard_map_equals_one_device():
    x = images(16, seed=8)
    path = SPEC.index_to_path(5)
    variables = random_variables(MODEL, x, path)
    feature, stats = _spmd_forward(build_model(CFG, bn_axis_name="batch"), variables, x,
                                   jnp.tile(jnp.asarray(path), (8, 1)))
    want, state = jax.jit(lambda v, x, p: MODEL.apply(v, x, p, True, mutable=["batch_stats"]))(
        variables, x, path)
    np.testing.assert_allclose(feature, want["feature"], rtol=1e-4, atol=1e-4)
    for got, ref in zip(jax.tree.leaves(stats), jax.tree.leaves(state["batch_stats"])):
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)


def test_devices_train_different_paths_in_one_spmd_step():
    x = images(16, seed=9)
    device_paths = SPEC.all_paths()[:8]  # blocks 0-2 vary, block 3 always group 0
    variables = random_variables(MODEL, x, device_paths[0])
    feature, stats = _spmd_forward(build_model(CFG, bn_axis_name="batch"), variables, x,
                                   jnp.asarray(device_paths))
    assert np.all(np.isfinite(feature))
    assert np.all(np.asarray(feature)[:, 48:] == 0)  # block 3 group 1: used by no device
    old = variables["batch_stats"]["backbone"]["stages_3"]["block_0"]
    new = stats["backbone"]["stages_3"]["block_0"]
    for bn in ("bn1", "bn2"):
        for key in ("mean", "var"):
            np.testing.assert_array_equal(new[bn][key][48:], old[bn][key][48:])
            assert np.all(new[bn][key][:48] != old[bn][key][:48])
