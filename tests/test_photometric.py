"""Device photometric augmentations (sdr_jax.data.photometric) against the host reference ops
of sdr_jax.data.augment, their sampled parameters, and layout independence."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import ml_collections
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from PIL import Image, ImageFilter

from sdr_jax.data import augment, photometric


def _config(image_size, **fields):
    """The default recipe (unlocked copy) with `fields` set."""
    cfg = ml_collections.ConfigDict(augment.default_aug_config(image_size).to_dict())
    cfg.update(fields)
    return cfg


def _images(n=4, size=24, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _host(op, images, *args):
    """A host op (planar float) applied per image, rounded to uint8 as the host pipeline does."""
    out = [op(im.transpose(2, 0, 1).astype(np.float32) / 255.0, *args) for im in images]
    return np.stack([np.clip(np.rint(o * 255.0), 0, 255).astype(np.uint8).transpose(1, 2, 0)
                     for o in out])


def _device(op, images, *args):
    out = op(jnp.asarray(images, jnp.float32) / 255.0, *args)
    return np.asarray(jnp.clip(jnp.round(out * 255.0), 0, 255).astype(jnp.uint8))


def _max_diff(a, b):
    return int(np.max(np.abs(a.astype(int) - b.astype(int))))


@pytest.mark.parametrize("factor", [0.6, 1.0, 1.4])
@pytest.mark.parametrize("name", ["brightness", "contrast", "saturation"])
def test_jitter_ops_match_the_host_ops(name, factor):
    images = _images()
    host = _host(getattr(augment, f"adjust_{name}"), images, factor)
    device = _device(jax.vmap(lambda x: getattr(photometric, f"adjust_{name}")(x, factor)),
                     images)
    assert _max_diff(host, device) <= 1


@pytest.mark.parametrize("shift", [-0.1, 0.03, 0.1])
def test_hue_matches_the_host_op(shift):
    images = _images(seed=1)
    assert _max_diff(_host(augment.adjust_hue, images, shift),
                     _device(lambda x: photometric.adjust_hue(x, shift), images)) <= 1


def test_grayscale_matches_the_host_op():
    images = _images(seed=2)
    assert _max_diff(_host(augment.to_grayscale, images),
                     _device(photometric.to_grayscale, images)) <= 1


@pytest.mark.parametrize("sigma", [0.5, 1.3, 2.0])
def test_blur_matches_a_separable_gaussian_with_reflect_padding(sigma):
    images = _images(n=2, size=32, seed=3)
    radius = 6
    taps = np.exp(-np.arange(-radius, radius + 1) ** 2 / (2 * sigma**2))
    taps /= taps.sum()
    x = images.astype(np.float64) / 255.0
    x = np.pad(x, ((0, 0), (radius, radius), (radius, radius), (0, 0)), mode="reflect")
    for axis in (1, 2):
        x = np.apply_along_axis(lambda v: np.convolve(v, taps, mode="valid"), axis, x)
    reference = np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)
    device = _device(lambda x: photometric.gaussian_blur(x, jnp.full(len(x), sigma), radius),
                     images)
    assert _max_diff(reference, device) <= 1
    # The host pipeline's blur is PIL's (MoCo-v2), an extended-box approximation of the same
    # Gaussian: close on smooth images, not bit-for-bit.
    smooth = np.asarray(Image.fromarray(images[0]).resize((8, 8)).resize((32, 32)))
    pil = np.asarray(Image.fromarray(smooth).filter(ImageFilter.GaussianBlur(radius=sigma)))
    ours = _device(lambda x: photometric.gaussian_blur(x, jnp.full(1, sigma), radius),
                   smooth[None])[0]
    assert np.mean(np.abs(pil.astype(int) - ours.astype(int))) < 2.0


def test_solarize_inverts_the_bright_half():
    x = jnp.array([0.0, 0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(photometric.solarize(x), [0.0, 0.25, 0.5, 0.25, 0.0])


def test_jitter_applies_the_ops_in_the_drawn_order():
    image = jnp.asarray(_images(n=1, seed=4)[0], jnp.float32) / 255.0
    params = {"brightness": 1.3, "contrast": 0.7, "saturation": 1.2, "hue": 0.05}
    ops = [lambda y: augment.adjust_brightness(y, 1.3), lambda y: augment.adjust_contrast(y, 0.7),
           lambda y: augment.adjust_saturation(y, 1.2), lambda y: augment.adjust_hue(y, 0.05)]
    for order in ([0, 1, 2, 3], [3, 2, 1, 0], [1, 3, 0, 2]):
        host = np.asarray(image).transpose(2, 0, 1)
        for op in order:
            host = ops[op](host)
        batch = {name: jnp.array([value]) for name, value in params.items()}
        device = photometric.color_jitter(image[None], dict(batch, order=jnp.array([order])))
        np.testing.assert_allclose(np.asarray(device[0]), host.transpose(1, 2, 0), atol=2e-6)


def test_sampled_parameters_follow_the_config():
    cfg = _config(224, solarize_prob=0.2)
    params = jax.tree.map(np.asarray, photometric.sample_params(jax.random.key(0), 8192, cfg))
    for name, prob in (("jitter", 0.8), ("gray", 0.2), ("blur", 0.5), ("solarize", 0.2)):
        assert abs(params[name].mean() - prob) < 0.02, name
    for name in ("brightness", "contrast", "saturation"):
        assert 0.6 <= params[name].min() and params[name].max() <= 1.4
        assert abs(params[name].mean() - 1.0) < 0.01
    assert -0.1 <= params["hue"].min() and params["hue"].max() <= 0.1
    assert 0.1 <= params["sigma"].min() and params["sigma"].max() <= 2.0
    orders = {tuple(o) for o in params["order"]}
    assert orders == set(itertools.permutations(range(4)))  # every order of the four ops
    # Independent draws: blur and solarize are not correlated.
    assert abs(np.corrcoef(params["blur"], params["solarize"])[0, 1]) < 0.05


def test_a_view_is_a_function_of_seed_step_and_view_only():
    cfg = _config(32, blur_prob=0.5, solarize_prob=0.2)
    images = _images(n=16, size=32, seed=5)
    run = jax.jit(lambda im, step: photometric.augment_batch(
        im, photometric.view_key(7, step, 1), cfg))
    one = np.asarray(run(images, 3))
    np.testing.assert_array_equal(one, np.asarray(run(images, 3)))
    assert not np.array_equal(one, np.asarray(run(images, 4)))
    # The same batch split over 8 devices (each with its offset in the batch): the same views.
    mesh = jax.make_mesh((8,), ("data",))

    def per_device(im, step):
        first = jax.lax.axis_index("data") * im.shape[0]
        return photometric.augment_batch(im, photometric.view_key(7, step, 1), cfg, first)

    sharded = jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(P("data"), P()),
                                    out_specs=P("data")))
    put = jax.device_put(images, NamedSharding(mesh, P("data")))
    np.testing.assert_array_equal(one, np.asarray(sharded(put, jnp.int32(3))))


def test_switched_off_ops_leave_the_images_alone():
    cfg = _config(32, jitter_prob=0.0, grayscale_prob=0.0, blur_prob=0.0)
    images = _images(seed=6)
    out = photometric.augment_batch(jnp.asarray(images), jax.random.key(0), cfg)
    np.testing.assert_array_equal(np.asarray(out), images)
