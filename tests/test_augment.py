"""Tests for sdr_jax.data.augment: each op against an independent reference (PIL, colorsys)."""
import colorsys

import numpy as np
from PIL import Image, ImageEnhance
import pytest

from sdr_jax.data import augment


def _image(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _config(image_size: int = 32, **overrides):
    """The default recipe with every random op switched off unless overridden."""
    cfg = augment.default_aug_config(image_size)
    cfg.flip_prob = 0.0
    cfg.jitter_prob = 0.0
    cfg.grayscale_prob = 0.0
    cfg.blur_prob = 0.0
    for name, value in overrides.items():
        cfg[name] = value
    return cfg


def _planar(image: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(image.transpose(2, 0, 1)).astype(np.float32) / 255.0


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8).transpose(1, 2, 0)


def test_default_config_recipe():
    small, large = augment.default_aug_config(32), augment.default_aug_config(224)
    assert small.image_size == 32 and large.image_size == 224
    assert tuple(small.crop_scale) == (0.2, 1.0)
    assert small.crop_ratio == pytest.approx((3 / 4, 4 / 3))
    assert (small.brightness, small.contrast, small.saturation, small.hue) == (.4, .4, .4, .1)
    assert (small.flip_prob, small.jitter_prob, small.grayscale_prob) == (.5, .8, .2)
    assert small.blur_prob == 0.0 and large.blur_prob == 0.5
    with pytest.raises(AttributeError):
        small.typo_field = 1  # Locked: typos fail loudly.


@pytest.mark.parametrize("shape,size", [((32, 32), 32), ((375, 500), 224), ((7, 90), 16),
                                        ((20, 20), 48)])
def test_output_shape_dtype_and_determinism(shape, size):
    image = _image(*shape)
    cfg = augment.default_aug_config(size)
    cfg.blur_prob = 0.5  # Exercise every op.
    first = augment.augment(image, np.random.default_rng(3), cfg)
    again = augment.augment(image, np.random.default_rng(3), cfg)
    other = augment.augment(image, np.random.default_rng(4), cfg)
    assert first.shape == (size, size, 3) and first.dtype == np.uint8
    assert first.flags.c_contiguous
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_crop_box_inside_image_and_within_scale_and_ratio():
    rng = np.random.default_rng(0)
    for _ in range(500):
        height, width = rng.integers(8, 300, size=2)
        top, left, h, w = augment.random_resized_crop_box(height, width, rng, (0.2, 1.0),
                                                          (3 / 4, 4 / 3))
        assert 0 <= top and top + h <= height and 0 <= left and left + w <= width
        assert h > 0 and w > 0
    # Square images never need the fallback: scale and (rounded) ratio hold.
    for _ in range(200):
        top, left, h, w = augment.random_resized_crop_box(200, 200, rng, (0.2, 1.0),
                                                          (3 / 4, 4 / 3))
        assert 0.2 * 200 * 200 * 0.95 <= h * w <= 200 * 200
        assert 3 / 4 - 0.02 <= w / h <= 4 / 3 + 0.02


def test_crop_box_fallback_is_centre_crop_clamped_to_ratio():
    # A 4 x 400 strip cannot hold any crop of 20%+ area and ratio 3/4..4/3.
    box = augment.random_resized_crop_box(4, 400, np.random.default_rng(0), (0.2, 1.0),
                                          (3 / 4, 4 / 3))
    assert box == (0, (400 - 5) // 2, 4, 5)
    box = augment.random_resized_crop_box(400, 4, np.random.default_rng(0), (0.2, 1.0),
                                          (3 / 4, 4 / 3))
    assert box == ((400 - 5) // 2, 0, 5, 4)


def test_crop_and_resize_match_pil_on_the_drawn_box():
    image = _image(60, 80)
    cfg = _config(24)
    out = augment.augment(image, np.random.default_rng(5), cfg)
    top, left, h, w = augment.random_resized_crop_box(60, 80, np.random.default_rng(5),
                                                      cfg.crop_scale, cfg.crop_ratio)
    expected = Image.fromarray(image[top:top + h, left:left + w]).resize(
        (24, 24), Image.Resampling.BILINEAR)
    np.testing.assert_array_equal(out, np.asarray(expected))


def test_flip_is_a_mirror():
    image = _image(40, 40)
    plain = augment.augment(image, np.random.default_rng(1), _config(32))
    flipped = augment.augment(image, np.random.default_rng(1), _config(32, flip_prob=1.0))
    np.testing.assert_array_equal(flipped, plain[:, ::-1])


def test_grayscale_has_equal_channels_and_pil_luma():
    image = _image(32, 32)
    out = augment.augment(image, np.random.default_rng(0),
                          _config(32, grayscale_prob=1.0, crop_scale=(1.0, 1.0),
                                  crop_ratio=(1.0, 1.0)))
    np.testing.assert_array_equal(out[..., 0], out[..., 1])
    np.testing.assert_array_equal(out[..., 0], out[..., 2])
    reference = np.asarray(Image.fromarray(image).convert("L")).astype(int)
    assert np.abs(out[..., 0].astype(int) - reference).max() <= 1


@pytest.mark.parametrize("factor", [0.6, 1.0, 1.4])
def test_brightness_contrast_saturation_match_pil_enhance(factor):
    image = _image(32, 32, seed=7)
    x = _planar(image)
    pil = Image.fromarray(image)
    cases = [(augment.adjust_brightness, ImageEnhance.Brightness),
             (augment.adjust_saturation, ImageEnhance.Color),
             (augment.adjust_contrast, ImageEnhance.Contrast)]
    for ours, theirs in cases:
        got = _to_uint8(ours(x, factor)).astype(int)
        want = np.asarray(theirs(pil).enhance(factor)).astype(int)
        # PIL rounds its grey level / contrast mean to an integer first.
        assert np.abs(got - want).max() <= 2, ours.__name__


@pytest.mark.parametrize("shift", [-0.1, 0.03, 0.25, 0.5])
def test_hue_matches_colorsys(shift):
    rng = np.random.default_rng(1)
    x = rng.random((3, 6, 7), dtype=np.float32)
    x[:, 0, 0] = 0.5  # A grey pixel: hue undefined, must stay grey.
    x[:, 0, 1] = (0.9, 0.9, 0.2)  # Ties between max channels.
    got = augment.adjust_hue(x, shift)
    want = np.empty_like(x)
    for i in range(x.shape[1]):
        for j in range(x.shape[2]):
            h, s, v = colorsys.rgb_to_hsv(*x[:, i, j])
            want[:, i, j] = colorsys.hsv_to_rgb((h + shift) % 1.0, s, v)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_colour_jitter_with_zero_strength_is_identity():
    x = _planar(_image(16, 16))
    cfg = _config(16, brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0)
    np.testing.assert_allclose(augment.color_jitter(x, np.random.default_rng(0), cfg), x,
                               atol=1e-6)


def test_colour_jitter_order_is_random():
    x = _planar(_image(16, 16))
    cfg = _config(16)
    outputs = {augment.color_jitter(x, np.random.default_rng(s), cfg).tobytes()
               for s in range(5)}
    assert len(outputs) == 5


def test_brightness_saturates_instead_of_wrapping():
    white = np.full((32, 32, 3), 255, np.uint8)
    cfg = _config(32, jitter_prob=1.0, brightness=0.4, contrast=0.0, saturation=0.0, hue=0.0)
    for seed in range(30):
        out = augment.augment(white, np.random.default_rng(seed), cfg)
        # Factors lie in [0.6, 1.4]: 255 * 0.6 = 153 at the darkest; a wrap would go below.
        assert out.min() >= 152


def test_blur_smooths_and_keeps_constant_images():
    image = _image(32, 32)
    cfg = _config(32, blur_prob=1.0, blur_sigma=(1.5, 2.0), crop_scale=(1.0, 1.0),
                  crop_ratio=(1.0, 1.0))
    blurred = augment.augment(image, np.random.default_rng(0), cfg).astype(float)
    total_variation = lambda a: np.abs(np.diff(a, axis=0)).sum() + np.abs(np.diff(a, axis=1)).sum()
    assert total_variation(blurred) < 0.5 * total_variation(image.astype(float))
    flat = np.full((32, 32, 3), 77, np.uint8)
    np.testing.assert_array_equal(augment.augment(flat, np.random.default_rng(0), cfg), flat)


def test_center_resize():
    image = _image(32, 32)
    assert augment.center_resize(image, 32) is image
    # Only the centre 60 x 60 square (columns 30..89) is kept, and it is flat.
    strip = np.zeros((60, 120, 3), np.uint8)
    strip[:, 30:90] = 200
    np.testing.assert_array_equal(augment.center_resize(strip, 24),
                                  np.full((24, 24, 3), 200, np.uint8))
    assert augment.center_resize(_image(375, 500), 224).shape == (224, 224, 3)


def test_bad_inputs_raise_clear_errors():
    cfg = augment.default_aug_config(32)
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="uint8"):
        augment.augment(np.zeros((32, 32, 3), np.float32), rng, cfg)
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        augment.augment(np.zeros((32, 32), np.uint8), rng, cfg)
    with pytest.raises(ValueError, match="RGB"):
        augment.center_resize(np.zeros((32, 32, 4), np.uint8), 32)
    for field, value, message in [("crop_scale", (0.5, 0.2), "crop_scale"),
                                  ("flip_prob", 1.5, "flip_prob"),
                                  ("hue", 0.7, "hue"),
                                  ("interpolation", "nearest", "interpolation"),
                                  ("image_size", 0, "image_size")]:
        bad = augment.default_aug_config(32)
        bad[field] = value
        with pytest.raises(ValueError, match=message):
            augment.validate_aug_config(bad)
    augment.validate_aug_config(cfg)
