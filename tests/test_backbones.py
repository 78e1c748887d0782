"""Backbones as plug-ins: a VGG-style SDRnet built by name trains, exports exactly and routes
through the same code as ResNet; the registry's errors; exported files of either kind load."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from models_testlib import images, random_variables, tiny_config
from sdr_jax.core import paths
from sdr_jax.jobs import route
from sdr_jax.methods.simsiam import simsiam_loss
from sdr_jax.models import backbones, build_model, export, model_config, path_spec
from sdr_jax.models.backbones import base


def vgg_config(num_groups=2):
    return model_config("vgg_tiny", stem="small", proj_dim=32, proj_layers=2, pred_dim=8,
                        sdr=dict(num_groups=num_groups))


@pytest.fixture(scope="module")
def trained_vgg():
    """A tiny VGG SDRnet after a few SGD steps of SimSiam on assorted paths (train-mode BN)."""
    cfg = vgg_config()
    model = build_model(cfg)
    spec = path_spec(cfg)
    x1, x2 = images(8, seed=1), images(8, seed=2)
    variables = random_variables(model, x1, spec.full_path())
    assert isinstance(model.backbone, backbones.vgg.VGG)
    assert "stages_3" in variables["params"]["backbone"]
    tx = optax.sgd(0.05, momentum=0.9)

    def loss_fn(params, batch_stats, path):
        o1, state = model.apply({"params": params, "batch_stats": batch_stats}, x1, path, True,
                                mutable=["batch_stats"])
        o2, state = model.apply({"params": params, **state}, x2, path, True,
                                mutable=["batch_stats"])
        return simsiam_loss(o1["p"], o2["p"], o1["z"], o2["z"]), state["batch_stats"]

    @jax.jit
    def step(params, batch_stats, opt_state, path):
        (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            params, batch_stats, path)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), batch_stats, opt_state, loss

    params, batch_stats = variables["params"], variables["batch_stats"]
    opt_state = tx.init(params)
    losses = []
    for path in [spec.full_path(), *spec.stage_paths(1), *spec.all_paths()[[0, 5, 10, 15]]]:
        params, batch_stats, opt_state, loss = step(params, batch_stats, opt_state,
                                                    jnp.asarray(path))
        losses.append(float(loss))
    assert np.all(np.isfinite(losses)) and step._cache_size() == 1
    trained = {"params": params, "batch_stats": batch_stats}
    assert not np.allclose(trained["params"]["backbone"]["stages_0"]["conv_0"]["kernel"],
                           variables["params"]["backbone"]["stages_0"]["conv_0"]["kernel"])
    return cfg, model, jax.tree.map(np.asarray, trained)


def test_vgg_exports_exactly(trained_vgg):
    cfg, model, variables = trained_vgg
    spec = path_spec(cfg)
    x = images(4, seed=3)
    masked = jax.jit(lambda v, x, p: model.apply(v, x, p, False))
    last = model.backbone.channel_layouts()[-1][-1]
    for path in [*spec.stage_paths(0), *spec.stage_paths(1), spec.stage_paths(2)[3],
                 *spec.all_paths()[[0, 6, 9, 15]]]:
        want = masked(variables, x, jnp.asarray(path))
        compact, compact_vars = export.export_subnet(cfg, variables, path)
        assert compact.sdr is None and isinstance(compact.backbone, backbones.vgg.VGG)
        got = compact.apply(compact_vars, x, None, False)
        active = paths.active_channels(last, int(path[-1]))
        assert got["feature"].shape == (4, active.size)
        np.testing.assert_allclose(got["feature"], np.asarray(want["feature"])[:, active],
                                   rtol=1e-5, atol=1e-5)
        assert np.all(np.delete(np.asarray(want["feature"]), active, axis=1) == 0)
        for key in ("z", "p"):
            np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-5)
        if (path != paths.ALL).any():
            assert (export.param_count(compact_vars["params"])
                    < export.param_count(variables["params"]))


def test_vgg_routes_through_the_prefix_tree(trained_vgg, tmp_path):
    cfg, model, variables = trained_vgg
    spec = path_spec(cfg)
    x = np.asarray(images(6, seed=4))
    tree = route.PathTree(model, variables)
    want = route.naive_features(model, variables, x, spec.all_paths())
    np.testing.assert_allclose(tree.features(x), want, rtol=1e-5, atol=1e-5)

    batches = [np.asarray(images(8, seed=s)) for s in (5, 6)]
    tree.recalibrate(batches)
    routed = tree.features(x)
    for index in (3, spec.num_paths - 1):
        path = spec.index_to_path(index)
        recal = export.recalibrate_bn(model, variables, path, batches)
        ref = model.apply(recal, x, jnp.asarray(path), False)["feature"]
        np.testing.assert_allclose(routed[index], ref, rtol=1e-5, atol=1e-5)

    # The routed sub-net's file reloads as a VGG and reproduces the routed features.
    compact, compact_vars = export.export_subnet(cfg, recal, path)
    export.save_exported(str(tmp_path / "best"), compact, compact_vars, {"index": index})
    loaded, loaded_vars = export.load_exported(str(tmp_path / "best"))
    assert isinstance(loaded.backbone, backbones.vgg.VGG) and loaded.backbone == compact.backbone
    active = paths.active_channels(model.backbone.channel_layouts()[-1][-1], int(path[-1]))
    np.testing.assert_allclose(loaded.apply(loaded_vars, x, None, False)["feature"],
                               routed[index][:, active], rtol=1e-5, atol=1e-5)
    params, flops = export.backbone_cost(loaded, loaded_vars, 16, None)
    full_params, full_flops = export.backbone_cost(model, variables, 16, spec.full_path())
    assert params < full_params and 0 < flops < full_flops


def test_an_exported_file_from_before_backbones_loads(tmp_path):
    """model.json of older exports holds the ResNet fields beside the heads' (no 'backbone')."""
    cfg = tiny_config(num_groups=2)
    model = build_model(cfg)
    x = images(4)
    variables = random_variables(model, x, path_spec(cfg).full_path())
    compact, compact_vars = export.export_subnet(cfg, variables, [1, 0, 1, 1])
    export.save_exported(str(tmp_path), compact, compact_vars, {"path": [1, 0, 1, 1]})
    model_file = tmp_path / export.MODEL_FILE
    saved = json.loads(model_file.read_text())
    backbone = saved["model"].pop("backbone")
    assert backbone.pop("class") == "ResNet"
    saved["model"].update({k: backbone[k] for k in ("stage_sizes", "block_cls", "width",
                                                    "stage_widths", "stem_kind",
                                                    "identity_select")})
    model_file.write_text(json.dumps(saved))
    loaded, loaded_vars = export.load_exported(str(tmp_path))
    assert loaded == compact
    want = compact.apply(compact_vars, x, None, False)
    got = loaded.apply(loaded_vars, x, None, False)
    for key in ("feature", "z", "p"):
        np.testing.assert_array_equal(got[key], want[key])


def test_registry_and_interface():
    with pytest.raises(backbones.UnknownArchError, match=r"Unknown arch 'vgg7'; choose one of "
                                                         r"\[.*'resnet18'.*'vgg_tiny'\]"):
        model_config("vgg7")
    assert "\n" not in str(backbones.UnknownArchError("x"))
    for arch in ("tiny", "vgg_tiny"):
        model = build_model(model_config(arch, stem="small", sdr=dict(num_groups=2)))
        bb = model.backbone
        shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, jnp.zeros(4, jnp.int32),
                                                     False), images(2))
        # The routing levels own every backbone child, each once.
        scopes = [name for level in bb.level_scopes() for name in level]
        assert sorted(scopes) == sorted(shapes["params"]["backbone"])
        assert len(bb.level_scopes()) == bb.num_stages + 1 == 5
        assert [len(layouts) for layouts in bb.channel_layouts()] == [
            len(widths) for widths in bb.channel_widths()]
    with pytest.raises(ValueError, match=r"SDR stage 0 \(8 channels\).*3 groups"):
        build_model(model_config("vgg_tiny", sdr=dict(num_groups=3)))
    # The network's dtype and BN settings are its backbone's, through clones too.
    probe = export.stats_probe(build_model(vgg_config(), bn_axis_name="batch"))
    assert (probe.backbone.bn_momentum, probe.backbone.bn_axis_name) == (0.0, None)


@pytest.mark.parametrize("size,kernel,stride", [(2, 3, 1), (4, 3, 2), (4, 1, 2), (3, 7, 2), (5, 3, 1)])
def test_conv_on_small_maps_is_a_patch_matmul_on_cpu(size, kernel, stride):
    """`conv`'s CPU patches (inputs of <= CPU_PATCHES_MAX_PIXELS pixels) equal XLA's convolution
    in values and both gradients; the compiled CPU program has a convolution only for larger maps."""
    rng = np.random.default_rng(size * kernel + stride)
    x = jnp.asarray(rng.standard_normal((3, size, size, 5), np.float32))
    w = jnp.asarray(rng.standard_normal((kernel, kernel, 5, 7), np.float32))
    pad = [(kernel // 2, kernel // 2)] * 2
    numbers = jax.lax.conv_dimension_numbers(x.shape, w.shape, base.NHWC)

    def ours(x, w):
        return base._conv(x, w, (stride, stride), pad, (1, 1), (1, 1), numbers)

    def xla(x, w):
        return jax.lax.conv_general_dilated(x, w, (stride, stride), pad, dimension_numbers=numbers)

    probe = jnp.asarray(rng.standard_normal(xla(x, w).shape, np.float32))
    for fn in (lambda f: f, lambda f: jax.grad(lambda x, w: jnp.sum(probe * f(x, w)), (0, 1))):
        for got, want in zip(jax.tree.leaves(jax.jit(fn(ours))(x, w)),
                             jax.tree.leaves(jax.jit(fn(xla))(x, w))):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    compiled = jax.jit(ours).lower(x, w).compile().as_text()
    assert ("convolution(" in compiled) == (size * size > base.CPU_PATCHES_MAX_PIXELS)
