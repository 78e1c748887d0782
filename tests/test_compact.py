"""Compact execution of sub-nets (models/compact.py): the path is data, the width the sub-net's.

Against the masked SDRnet: the same outputs on the active channels, the same running statistics,
the same gradients (zero outside the path), the same SDR step (params after one update, CPU
float32), on one device and on eight; and one compile per progressive stage. Also the gathers'
other use: the entries every sub-net shares (`export.shared_entries`, `sdr.freeze_shared`).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import sdr_mosaic
from sdr_jax import methods, models
from sdr_jax.core import mesh as mesh_lib
from sdr_jax.core.paths import ALL, PathSpec
from sdr_jax.models import export
from sdr_jax.models.compact import CompactSubnets
from sdr_jax.train import optim, sdr
from sdr_jax.train.state import create_train_state
from tests.test_train_sdr import assignments_file, pool, tiny_config  # noqa: F401 (fixtures)

SPEC = PathSpec(num_blocks=4, num_groups=2)


def make_model(arch, **fields):
    cfg = models.model_config(arch, stem="small", proj_dim=32, pred_dim=16, kd_head=True,
                              sdr=dict(num_groups=2, stages=(0, 1, 2, 3)), **fields)
    return models.build_model(cfg)


def random_variables(model, seed=0):
    """Random variables: BN scales and means off their initial values, so every term counts."""
    x = jnp.zeros((2, 16, 16, 3), jnp.uint8)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x, SPEC.full_path(), False))
    rng = np.random.default_rng(seed)
    fill = lambda s: jnp.asarray(rng.normal(size=s.shape) * 0.3 + 1.0 * (s.ndim == 1), s.dtype)  # noqa
    variables = jax.tree.map(fill, shapes)
    variables["batch_stats"] = jax.tree.map(jnp.abs, variables["batch_stats"])
    return variables


def images(rng, n, size=16):
    return jnp.asarray(rng.integers(0, 256, (n, size, size, 3)), jnp.uint8)


def one_path_per_stage(rng):
    return [SPEC.stage_paths(s)[rng.integers(SPEC.num_groups ** s)] for s in range(1, 5)]


@pytest.mark.parametrize("arch", ["tiny", "tiny_bottleneck", "vgg_tiny"])
def test_compact_forward_equals_masked_on_the_active_channels(arch):
    model = make_model(arch)
    variables = random_variables(model)
    rng = np.random.default_rng(1)
    x = images(rng, 8)
    applies = {s: jax.jit(lambda v, x, p, s=s: CompactSubnets(model, s).apply(
        v, x, p, True, mutable=["batch_stats"])) for s in range(1, 5)}
    for path in one_path_per_stage(rng) + [np.array([ALL, ALL, 1, 0], np.int32)]:
        stage = SPEC.stage_of(path)
        want, want_stats = model.apply(variables, x, path, True, mutable=["batch_stats"])
        got, got_stats = applies[stage](variables, x, jnp.asarray(path))
        kept = model.backbone.active_channels(path)[-1][-1]
        assert got["feature"].shape == (8, kept.size)
        np.testing.assert_allclose(got["feature"], want["feature"][:, kept], atol=1e-5, rtol=1e-5)
        off = np.setdiff1d(np.arange(want["feature"].shape[1]), kept)
        assert not np.asarray(want["feature"][:, off]).any()  # masked: zeros there
        for key in ("z", "p", "kd"):
            np.testing.assert_allclose(got[key], want[key], atol=1e-4, rtol=1e-4, err_msg=key)
        # Running statistics: the path's channels updated alike, the others untouched.
        for (keypath, a), b in zip(jax.tree_util.tree_leaves_with_path(got_stats),
                                   jax.tree.leaves(want_stats)):
            np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5,
                                       err_msg=jax.tree_util.keystr(keypath))
    # Paths are data: one compile per stage, whatever the path.
    assert all(f._cache_size() == 1 for f in applies.values())


def test_gradients_land_in_the_full_weights_and_are_zero_outside_the_path():
    model = make_model("tiny")
    variables = random_variables(model)
    rng = np.random.default_rng(2)
    x = images(rng, 8)
    path = np.array([0, 1, 1, 0], np.int32)

    def loss(params, run):
        out = run({"params": params, "batch_stats": variables["batch_stats"]})
        return jnp.sum(out["p"] ** 2) + jnp.sum(out["kd"] * out["z"])

    masked = jax.grad(loss)(variables["params"], lambda v: model.apply(
        v, x, path, True, mutable=["batch_stats"])[0])
    compact = jax.jit(jax.grad(loss), static_argnums=1)(
        variables["params"], lambda v: CompactSubnets(model, 4).apply(
            v, x, jnp.asarray(path), True, mutable=["batch_stats"])[0])
    assert jax.tree.structure(compact) == jax.tree.structure(masked)
    for (keypath, a), b in zip(jax.tree_util.tree_leaves_with_path(compact),
                               jax.tree.leaves(masked)):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4,
                                   err_msg=jax.tree_util.keystr(keypath))
    # Every SDR stage's kernels: zero gradient on the output channels the path does not use.
    grads = compact["backbone"]
    for s, (inner, outer) in enumerate(model.backbone.active_channels(path)):
        for name, cout in (("conv1", inner), ("conv2", outer)):
            kernel = np.asarray(grads[f"stages_{s}"]["block_0"][name]["kernel"])
            off = np.setdiff1d(np.arange(kernel.shape[-1]), cout)
            assert off.size and not kernel[..., off].any(), (s, name)
            assert kernel[..., cout].any()


def test_shared_entries_are_what_every_path_uses_and_freezing_stops_only_their_gradient():
    model = make_model("tiny")
    variables = random_variables(model)
    rng = np.random.default_rng(3)
    x = images(rng, 8)
    weights = {k: rng.normal(size=(8, 32)) for k in ("p", "kd")}  # a generic linear read-out

    def loss(params, path):
        out = model.apply({"params": params, "batch_stats": variables["batch_stats"]}, x, path,
                          True, mutable=["batch_stats"])[0]
        return sum(jnp.sum(out[k] * w) for k, w in weights.items())

    # Independently of the gathers: from the channels each path uses (`active_channels`).
    shared = export.shared_entries(model, variables)
    paths = [np.full(4, g, np.int32) for g in range(2)]
    common = [[np.intersect1d(a, b) for a, b in zip(*stage)]  # per stage: (inner, outer)
              for stage in zip(*(model.backbone.active_channels(p) for p in paths))]
    for s, (inner, outer) in enumerate(common):
        block = shared["backbone"][f"stages_{s}"]["block_0"]
        want = np.zeros(block["conv2"]["kernel"].shape[2:], bool)
        want[np.ix_(inner, outer)] = True
        np.testing.assert_array_equal(block["conv2"]["kernel"], np.broadcast_to(
            want, block["conv2"]["kernel"].shape), err_msg=f"stage {s} conv2")
        np.testing.assert_array_equal(np.flatnonzero(block["bn2"]["scale"]), outer)
        assert 0 < want.mean() < 1
    for head in ("predictor", sdr.KD_HEAD):  # the heads past the projector's input: all shared
        assert all(np.all(leaf) for leaf in jax.tree.leaves(shared[head]))

    # Freezing: zero gradient on the shared entries, the rest untouched; the SiamKD predictor
    # (used by sub-nets alone) keeps its whole gradient.
    path = np.array([0, 1, 1, 0], np.int32)
    free = jax.jit(jax.grad(loss))(variables["params"], path)
    freeze = lambda p: sdr._freeze_shared(model, p, variables["batch_stats"])  # noqa: E731
    frozen = jax.jit(jax.grad(lambda p, path: loss(freeze(p), path)))(variables["params"], path)
    for keypath, g, f, s in zip(*zip(*jax.tree_util.tree_leaves_with_path(frozen)),
                                jax.tree.leaves(free), jax.tree.leaves(shared)):
        name = jax.tree_util.keystr(keypath)
        g, f, s = np.asarray(g), np.asarray(f), np.asarray(s)
        if sdr.KD_HEAD in name:
            s = np.zeros_like(s)
        assert not g[s].any(), name
        np.testing.assert_allclose(g[~s], f[~s], rtol=1e-4, atol=1e-4, err_msg=name)


def sdr_step_setup(config, devices, compact_stage):
    mesh = mesh_lib.make_data_mesh(devices)
    sdrnet = models.build_model(config.model, bn_axis_name=mesh_lib.DATA_AXIS)
    subnet = models.build_model(config.model, bn_axis_name=mesh_lib.DATA_AXIS, sync_bn=False)
    tx, _ = optim.make_optimizer(config.optim, 10)
    full = jnp.asarray(models.path_spec(config.model).full_path())
    return mesh, sdr.make_sdr_step(methods.build(config.method, 10), sdrnet, subnet, tx, mesh,
                                   full, kd="siamkd", kd_weight=0.5, with_subnets=True,
                                   aug_cfg=None, compact_stage=compact_stage)


def initial_state(config):
    model = models.build_model(config.model)
    tx, _ = optim.make_optimizer(config.optim, 10)
    full = jnp.asarray(models.path_spec(config.model).full_path())
    state = jax.device_get(jax.jit(lambda r: create_train_state(model, tx, r, 32, full))(
        jax.random.PRNGKey(1)))
    method_state = methods.build(config.method, 10).init_state(
        {"params": state.params, "batch_stats": state.batch_stats})  # BYOL: the target network
    return state.replace(method_state=jax.device_get(method_state))


def sdr_batch(rng, paths, sub=4):
    imgs = lambda *shape: rng.integers(0, 256, shape + (32, 32, 3), dtype=np.uint8)  # noqa
    return {"d0_view1": imgs(16), "d0_view2": imgs(16), "paths": paths.astype(np.int32),
            "sub_view1": imgs(len(paths), sub), "sub_view2": imgs(len(paths), sub)}


def run_sdr_step(config, devices, stage, state, batch):
    mesh, step = sdr_step_setup(config, devices, stage)
    new_state, metrics = step(jax.device_put(state, mesh_lib.replicated(mesh)),
                              mesh_lib.shard_batch(batch, mesh))
    return jax.device_get(new_state), {k: float(v) for k, v in metrics.compute().items()}, step


def assert_same_step(got, want, atol=1e-5):
    (got_state, got_metrics), (want_state, want_metrics) = got, want
    for key in want_metrics:
        np.testing.assert_allclose(got_metrics[key], want_metrics[key], atol=atol, rtol=1e-4,
                                   err_msg=key)
    # The optimiser's momentum holds the first gradients, O(1) entries: float32 summation order
    # (the masked convolutions also add the zeros of inactive channels) shows at ~1e-4 there.
    for part, tolerance in (("params", atol), ("batch_stats", atol), ("opt_state", 1e-3)):
        for (keypath, a), b in zip(jax.tree_util.tree_leaves_with_path(getattr(got_state, part)),
                                   jax.tree.leaves(getattr(want_state, part))):
            np.testing.assert_allclose(a, b, atol=tolerance, rtol=max(tolerance, 1e-4),
                                       err_msg=f"{part}{jax.tree_util.keystr(keypath)}")


@pytest.mark.parametrize("method", ["simsiam", "byol"])
def test_compact_sdr_step_equals_masked_step(method):
    config = sdr_mosaic.get_config(f"tiny,method={method}")
    state = initial_state(config)
    rng = np.random.default_rng(3)
    for stage in (1, 4):
        paths = SPEC.stage_paths(stage)[rng.permutation(2 ** stage)[:2]]
        batch = sdr_batch(rng, paths)
        masked_state, masked_metrics, _ = run_sdr_step(config, jax.devices()[:1], None, state,
                                                       batch)
        compact_state, compact_metrics, step = run_sdr_step(config, jax.devices()[:1], stage,
                                                            state, batch)
        assert masked_metrics["loss_kd"] != 0 and masked_metrics["loss_subnet"] != 0
        assert_same_step((compact_state, compact_metrics), (masked_state, masked_metrics))
        assert step._cache_size() == 1


@pytest.mark.slow
def test_compact_on_eight_devices_equals_one_device():
    config = sdr_mosaic.get_config("tiny")
    state = initial_state(config)
    rng = np.random.default_rng(4)
    batch = sdr_batch(rng, SPEC.stage_paths(4)[rng.permutation(16)[:8]])
    one_state, one, _ = run_sdr_step(config, jax.devices()[:1], 4, state, batch)
    eight_state, eight, step = run_sdr_step(config, jax.devices(), 4, state, batch)
    assert_same_step((eight_state, eight), (one_state, one))
    # Different paths on different devices, a second batch: still one compile.
    batch = sdr_batch(rng, SPEC.stage_paths(4)[rng.permutation(16)[:8]])
    mesh = mesh_lib.make_data_mesh(jax.devices())
    step(jax.device_put(state, mesh_lib.replicated(mesh)), mesh_lib.shard_batch(batch, mesh))
    assert step._cache_size() == 1


@pytest.mark.slow
def test_training_compiles_once_per_progressive_stage(small_mosaic_dir, assignments_file,  # noqa: F811
                                                      tmp_path):
    config = tiny_config(small_mosaic_dir, assignments_file, train__num_steps=10,
                         eval__knn_tasks=())
    assert config.sdr.subnet_exec == "compact"
    trainer = sdr.SDRTrainer(config, str(tmp_path))
    state = trainer.init_state()
    data = trainer.make_data(0, None)
    step_fn = trainer.make_step_fn()
    for _ in range(1, 11):  # all five stages, two steps each, other paths every step
        state, _ = step_fn(state, next(data))
    assert {k: f._cache_size() for k, f in trainer.step_functions.items()} == {
        0: 1, 1: 1, 2: 1, 3: 1, 4: 1}


def test_compact_refuses_what_it_cannot_do():
    model = make_model("tiny")
    with pytest.raises(ValueError, match="stage"):
        CompactSubnets(model, 0)
    with pytest.raises(ValueError, match="sync_bn=False"):
        CompactSubnets(model.clone(bn_axis_name="data"), 1)
