"""Augmentations split host/device: per-view recipes reach their view (host crop and flip, device
colour work), and a step's augmented batch is a function of (seed, step) on any device layout."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from sdr_jax.core import mesh as mesh_lib
from sdr_jax.core.errors import ConfigError
from sdr_jax.data import augment, input_pipeline, photometric
from sdr_jax.train import pretrain, sdr


def _images(*shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (*shape, 32, 32, 3), dtype=np.uint8)


def _aug(**view2):
    cfg = augment.default_aug_config(32).unlock()
    cfg.view2.update(view2)
    return cfg.lock()


def _compiled(prepare, devices):
    """`(batch, step) -> prepare(this device's share, step)` under shard_map on `devices`, as
    the steps run it (one compile for every step)."""
    mesh = mesh_lib.make_data_mesh(devices)
    run = jax.jit(jax.shard_map(prepare, mesh=mesh, in_specs=(P(mesh_lib.DATA_AXIS), P()),
                                out_specs=P(mesh_lib.DATA_AXIS)))
    return lambda batch, step: jax.tree.map(np.asarray, run(mesh_lib.shard_batch(batch, mesh),
                                                            jnp.int32(step)))


def _on_devices(prepare, batch, devices, step):
    return _compiled(prepare, devices)(batch, step)


def _is_gray(images):
    return np.all(images[..., 0] == images[..., 1]) and np.all(images[..., 1] == images[..., 2])


def test_view_config_applies_the_views_overrides_only():
    cfg = _aug(grayscale_prob=1.0, solarize_prob=0.2)
    one, two = augment.view_config(cfg, 1), augment.view_config(cfg, 2)
    assert (one.grayscale_prob, one.solarize_prob) == (0.2, 0.0)
    assert (two.grayscale_prob, two.solarize_prob) == (1.0, 0.2)
    assert one.crop_scale == two.crop_scale == cfg.crop_scale and "view1" not in one
    augment.validate_aug_config(cfg)
    with pytest.raises(ConfigError, match="view2.*solarize_prob"):
        augment.validate_aug_config(_aug(solarize_prob=1.5))


def test_view2_grayscale_reaches_view2_only_on_the_device():
    batch = {"view1": _images(16), "view2": _images(16, seed=1)}
    out = _on_devices(pretrain.device_augment(_aug(grayscale_prob=1.0), seed=0), batch,
                      jax.devices(), step=1)
    assert _is_gray(out["view2"])
    assert not any(_is_gray(image) for image in out["view1"][:4])  # p = 0.2 each: not all grey


def test_view_crop_overrides_reach_the_host_crop():
    image = _images(1, seed=2)[0]
    cfg = augment.default_aug_config(32).unlock()
    cfg.crop_scale, cfg.crop_ratio = (1.0, 1.0), (1.0, 1.0)  # the whole image
    cfg.view1.flip_prob, cfg.view2.flip_prob = 1.0, 0.0
    source = [{"image": image, "id": i, "label": 0} for i in range(4)]
    batch = next(iter(input_pipeline.pretrain_dataset(source, batch_size=4, seed=0,
                                                      aug_cfg=cfg.lock())))
    np.testing.assert_array_equal(batch["view1"], np.stack([image[:, ::-1]] * 4))
    np.testing.assert_array_equal(batch["view2"], np.stack([image] * 4))


def test_host_crop_and_flip_draws_what_the_whole_host_augmentation_draws_first():
    image = _images(1, seed=3)[0]
    cfg = augment.default_aug_config(32)
    crop_only = ml_collections.ConfigDict({**augment.view_config(cfg, 1).to_dict(),
                                           "jitter_prob": 0.0, "grayscale_prob": 0.0})
    for seed in range(5):  # the same crop box and flip: the photometrics draw after them
        np.testing.assert_array_equal(
            augment.crop_and_flip(image, np.random.default_rng(seed), cfg),
            augment.augment(image, np.random.default_rng(seed), crop_only))


def _equal(one, eight):
    """Every random draw is keyed by global position, so 8 devices draw what 1 draws, and the
    colour maths is exact in any XLA fusion (`photometric.mean_luma`): the same bits."""
    jax.tree.map(np.testing.assert_array_equal, one, eight)


def test_pretrain_views_are_a_function_of_seed_and_step_on_any_layout():
    prepare = pretrain.device_augment(_aug(solarize_prob=0.5), seed=3)
    batch = {"view1": _images(16), "view2": _images(16, seed=1)}
    one = _on_devices(prepare, batch, jax.devices()[:1], step=5)
    eight = _on_devices(prepare, batch, jax.devices(), step=5)
    _equal(one, eight)
    # A restart (a fresh compile of the same layout) gives the same bits.
    again = _on_devices(pretrain.device_augment(_aug(solarize_prob=0.5), seed=3), batch,
                        jax.devices(), step=5)
    jax.tree.map(np.testing.assert_array_equal, again, eight)
    other = _on_devices(prepare, batch, jax.devices(), step=6)
    assert not np.array_equal(other["view1"], eight["view1"])


@pytest.mark.parametrize("batch", [16, 64])
def test_pretrain_views_are_the_same_bits_on_any_layout_at_every_step(batch):
    cfg = _aug(blur_prob=0.5, solarize_prob=0.5)  # view2: every op of the device
    images = {"view1": _images(batch, seed=4), "view2": _images(batch, seed=5)}
    for seed, steps in ((0, (1, 2)), (11, (7, 123))):
        prepare = pretrain.device_augment(cfg, seed)
        one, eight = _compiled(prepare, jax.devices()[:1]), _compiled(prepare, jax.devices())
        for step in steps:
            _equal(one(images, step), eight(images, step))


def test_colour_jitter_is_the_same_floats_on_any_layout():
    """Before the uint8 rounding, which hides a float difference unless it crosses a level."""
    cfg = augment.view_config(_aug(), 1)

    def prepare(batch, step):
        local = batch["images"].shape[0]
        params = photometric.sample_params(photometric.view_key(0, step, 1), local, cfg,
                                           jax.lax.axis_index(mesh_lib.DATA_AXIS) * local)
        return photometric.color_jitter(batch["images"].astype(jnp.float32) / 255.0, params)

    batch = {"images": _images(16, seed=6)}
    one, eight = _compiled(prepare, jax.devices()[:1]), _compiled(prepare, jax.devices())
    for step in (1, 5):
        np.testing.assert_array_equal(one(batch, step), eight(batch, step))


def test_sdr_views_are_a_function_of_seed_and_step_on_any_layout():
    prepare = sdr.device_augment(_aug(grayscale_prob=1.0), seed=0)
    batch = {"d0_view1": _images(16), "d0_view2": _images(16, seed=1),
             "paths": np.zeros((8, 4), np.int32),
             "sub_view1": _images(8, 4, seed=2), "sub_view2": _images(8, 4, seed=3)}
    one = _on_devices(prepare, batch, jax.devices()[:1], step=2)
    eight = _on_devices(prepare, batch, jax.devices(), step=2)
    _equal(one, eight)
    assert _is_gray(eight["sub_view2"]) and _is_gray(eight["d0_view2"])
    # Slots draw their own augmentations: equal sub-net inputs come out differently.
    same = dict(batch, sub_view1=np.broadcast_to(batch["sub_view1"][:1], (8, 4, 32, 32, 3)))
    out = _on_devices(prepare, same, jax.devices(), step=2)["sub_view1"]
    assert not np.array_equal(out[0], out[1])


def test_byol_configs_write_the_asymmetric_recipe():
    from sdr_jax import config_base
    imagenet = config_base.load_config_file("configs/byol_imagenet.py").data.aug
    views = [augment.view_config(imagenet, v) for v in augment.VIEWS]
    assert [(v.blur_prob, v.solarize_prob) for v in views] == [(1.0, 0.0), (0.1, 0.2)]
    mosaic = config_base.load_config_file("configs/byol_mosaic.py").data.aug
    views = [augment.view_config(mosaic, v) for v in augment.VIEWS]
    assert [(v.blur_prob, v.solarize_prob) for v in views] == [(0.0, 0.0), (0.0, 0.2)]
