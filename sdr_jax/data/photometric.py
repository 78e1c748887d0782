"""Photometric augmentations on the device: batched, jitted, per-example random parameters.

The host pipeline ships uint8 crops (random-resized crop + flip, `augment.crop_and_flip`); the
colour work runs here, inside the jitted step, on the whole batch at once. Semantics are
torchvision's, as the host reference ops in `augment.py` (which the tests compare against):

- colour jitter (probability `jitter_prob`): brightness, contrast, saturation and hue factors
  drawn uniformly, the four ops applied in a random order per example;
- grayscale (`grayscale_prob`): ITU-R 601 luma on all three channels;
- Gaussian blur (`blur_prob`, sigma ~ U(blur_sigma)): separable Gaussian kernel over a
  reflect-padded image, radius ceil(3 * max sigma);
- solarize (`solarize_prob`, BYOL's second view): values >= 0.5 become 1 - value.

The float image is rounded to uint8 once, at the end. dm-pix was the candidate library: its
blur takes one sigma per call and pads with zeros, and its contrast, saturation and hue follow
TF's definitions (per-channel mean, HSV), not torchvision's, so the ops are written here (each
a few lines, each tested against the host op). Randomness: example i of a batch draws
from `fold_in(key, i)` with i its index in the global batch, so a batch's augmentation is a
pure function of (key, images) whatever the device layout, bit for bit: the one float
reduction, contrast's mean luma, is an exact integer sum (`mean_luma`), and the elementwise maths
rounds alike in any fusion; callers derive `key` from (seed, step, view) (`view_key`), which
keeps kill-and-resume exact.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_collections

from sdr_jax.data import augment as augment_lib

_BRIGHTNESS, _CONTRAST, _SATURATION, _HUE = range(4)


def view_key(seed: int | jax.Array, step: jax.Array, view: int) -> jax.Array:
    """The key of one view's augmentations at one step: fold_in(fold_in(key(seed), step), view)."""
    key = jax.random.fold_in(jax.random.key(seed), step)
    return jax.random.fold_in(key, view)


def augment_views(view1: jax.Array, view2: jax.Array, aug_cfg: ml_collections.ConfigDict,
                  seed: int, step: jax.Array, *, first_index: int | jax.Array = 0,
                  slots: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """Both views of a batch through their own recipes (`augment.view_config(aug_cfg, v)`).

    View v draws from `view_key(seed, step, v)`, example i from its fold_in with
    first_index + i (the example's index in the global batch: the device's offset under
    `jax.shard_map`). With `slots` (P,), the views are (P, b, H, W, 3), one batch per SDR path
    slot: slot s draws from fold_in(view_key(seed, step, v), s), its examples indexed 0..b-1
    (a slot's batch lies on one device).
    """
    out = []
    for view, images in zip(augment_lib.VIEWS, (view1, view2)):
        cfg = augment_lib.view_config(aug_cfg, view)
        key = view_key(seed, step, view)
        if slots is None:
            out.append(augment_batch(images, key, cfg, first_index))
        else:
            keys = jax.vmap(lambda s: jax.random.fold_in(key, s))(slots)
            out.append(jax.vmap(lambda x, k: augment_batch(x, k, cfg))(images, keys))
    return out[0], out[1]


def sample_params(key: jax.Array, batch: int, cfg: ml_collections.ConfigDict,
                  first_index: int | jax.Array = 0) -> dict:
    """Per-example parameters of a batch: a dict of (batch, ...) arrays (see module doc).

    Example i draws from fold_in(key, first_index + i): inside `jax.shard_map` pass the
    device's offset in the global batch, so that every layout draws the same parameters.
    """
    def one(index):
        k = jax.random.split(jax.random.fold_in(key, index), 9)

        def factor(k, strength):
            return jax.random.uniform(k, (), minval=max(0.0, 1.0 - strength),
                                      maxval=1.0 + strength)

        return {
            "jitter": jax.random.bernoulli(k[0], cfg.jitter_prob),
            "order": jax.random.permutation(k[1], 4),
            "brightness": factor(k[2], cfg.brightness),
            "contrast": factor(k[3], cfg.contrast),
            "saturation": factor(k[4], cfg.saturation),
            "hue": jax.random.uniform(k[5], (), minval=-cfg.hue, maxval=cfg.hue),
            "gray": jax.random.bernoulli(k[6], cfg.grayscale_prob),
            "blur": jax.random.bernoulli(k[7], cfg.blur_prob),
            "sigma": jax.random.uniform(k[8], (), minval=cfg.blur_sigma[0],
                                        maxval=cfg.blur_sigma[1]),
            "solarize": jax.random.bernoulli(jax.random.fold_in(k[8], 1),
                                             cfg.get("solarize_prob", 0.0)),
        }
    return jax.vmap(one)(first_index + jnp.arange(batch))


def augment_batch(images: jax.Array, key: jax.Array, cfg: ml_collections.ConfigDict,
                  first_index: int | jax.Array = 0) -> jax.Array:
    """uint8 (N, H, W, 3) -> uint8 (N, H, W, 3) with the photometric ops of `cfg`.

    `first_index`: the index of `images[0]` in the global batch (see `sample_params`).
    """
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be (batch, height, width, 3), got {images.shape}.")
    params = sample_params(key, images.shape[0], cfg, first_index)
    x = images.astype(jnp.float32) / 255.0
    if cfg.jitter_prob > 0:
        x = jnp.where(params["jitter"][:, None, None, None], color_jitter(x, params), x)
    if cfg.grayscale_prob > 0:
        x = jnp.where(params["gray"][:, None, None, None], to_grayscale(x), x)
    if cfg.blur_prob > 0:
        blurred = gaussian_blur(x, params["sigma"], math.ceil(3 * cfg.blur_sigma[1]))
        x = jnp.where(params["blur"][:, None, None, None], blurred, x)
    if cfg.get("solarize_prob", 0.0) > 0:
        x = jnp.where(params["solarize"][:, None, None, None], solarize(x), x)
    return jnp.clip(jnp.round(x * 255.0), 0, 255).astype(jnp.uint8)


# The ops, on float images in [0, 1], (..., H, W, 3); torchvision semantics.
def luma(x: jax.Array) -> jax.Array:
    return 0.299 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2]


def adjust_brightness(x: jax.Array, factor: jax.Array) -> jax.Array:
    return jnp.clip(x * factor, 0.0, 1.0)


def mean_luma(x: jax.Array) -> jax.Array:
    """(..., H, W, 3) -> (..., 1, 1, 1): each image's mean luma, summed exactly.

    A float sum's rounding depends on its order, which XLA picks per program (the per-device
    batch size changes it), so the pixels' lumas are rounded to a grid of 2^-bits and summed
    as int32 (exact in any order; bits keeps the sum below 2^30): the mean is then a pure
    function of the image on every device layout, within 2^-bits / 2 of the float mean.
    """
    height, width = x.shape[-3:-1]
    bits = 30 - math.ceil(math.log2(height * width))
    total = jnp.sum(jnp.round(luma(x) * 2.0**bits).astype(jnp.int32), axis=(-2, -1))
    return (total.astype(jnp.float32) / (height * width) * 2.0**-bits)[..., None, None, None]


def adjust_contrast(x: jax.Array, factor: jax.Array) -> jax.Array:
    mean = mean_luma(x)
    return jnp.clip(x * factor + mean * (1.0 - factor), 0.0, 1.0)


def adjust_saturation(x: jax.Array, factor: jax.Array) -> jax.Array:
    return jnp.clip(x * factor + luma(x)[..., None] * (1.0 - factor), 0.0, 1.0)


def adjust_hue(x: jax.Array, shift: jax.Array) -> jax.Array:
    """Rotates the HSV hue by `shift` turns (the host op's closed form, no HSV round trip)."""
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    # Which channel is the max, by comparing the channels with each other: `value == r` would
    # compare against a recomputed max, and XLA may round the two copies differently (FMA in
    # one fusion, not in the other), flipping the branch and the hue for some layouts.
    r_max = (r >= g) & (r >= b)
    g_max = ~r_max & (g >= b)
    value = jnp.where(r_max, r, jnp.where(g_max, g, b))
    chroma = value - jnp.minimum(jnp.minimum(r, g), b)
    inv_chroma = jnp.where(chroma > 0, 1.0 / jnp.where(chroma > 0, chroma, 1.0), 0.0)
    hue6 = jnp.where(r_max, (g - b) * inv_chroma,
                     jnp.where(g_max, (b - r) * inv_chroma + 2.0,
                               (r - g) * inv_chroma + 4.0)) + 6.0 * shift
    channels = []
    for n in (5.0, 3.0, 1.0):
        k = jnp.mod(hue6 + n, 6.0)
        channels.append(value - chroma * jnp.clip(jnp.minimum(k, 4.0 - k), 0.0, 1.0))
    return jnp.stack(channels, axis=-1)


def to_grayscale(x: jax.Array) -> jax.Array:
    return jnp.broadcast_to(luma(x)[..., None], x.shape)


def gaussian_blur(x: jax.Array, sigma: jax.Array, radius: int) -> jax.Array:
    """(N, H, W, 3) blurred by (2 radius + 1)-tap Gaussians of per-image std `sigma` (N,),
    reflect padding (torchvision's GaussianBlur). Separable, as a weighted sum of shifted
    copies: per-image kernels would make a convolution grouped per example, which XLA:CPU
    runs ~50x slower than these 2 (2 radius + 1) fused multiply-adds per value."""
    offsets = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
    taps = jnp.exp(-offsets**2 / (2.0 * jnp.asarray(sigma, jnp.float32)[:, None]**2))
    taps = taps / jnp.sum(taps, axis=1, keepdims=True)  # (N, 2 radius + 1)
    height, width = x.shape[1:3]
    padded = jnp.pad(x, ((0, 0), (radius, radius), (0, 0), (0, 0)), mode="reflect")
    x = sum(taps[:, t, None, None, None] * padded[:, t:t + height] for t in range(2 * radius + 1))
    padded = jnp.pad(x, ((0, 0), (0, 0), (radius, radius), (0, 0)), mode="reflect")
    return sum(taps[:, t, None, None, None] * padded[:, :, t:t + width]
               for t in range(2 * radius + 1))


def solarize(x: jax.Array) -> jax.Array:
    """BYOL's solarization: values at or above one half are inverted."""
    return jnp.where(x < 0.5, x, 1.0 - x)


def color_jitter(x: jax.Array, params: dict) -> jax.Array:
    """(N, H, W, 3): each image's four jitter ops in its own order `params['order']` (N, 4).

    Brightness, contrast and saturation are one blend x f + c (1 - f) with c = 0, the image's
    mean luma or the pixel's luma; so each of the four positions costs one blend and one hue
    rotation (selected per image), not four ops under a per-example switch.
    """
    factors = jnp.stack([params["brightness"], params["contrast"], params["saturation"],
                         jnp.ones_like(params["hue"])], axis=1)  # (N, 4); hue blends as identity
    hue = params["hue"][:, None, None]
    for position in range(4):
        op = params["order"][:, position]
        factor = jnp.take_along_axis(factors, op[:, None], axis=1)[:, :, None, None]  # (N,1,1,1)
        gray = luma(x)[..., None]
        target = jnp.where((op == _CONTRAST)[:, None, None, None],
                           mean_luma(x),
                           jnp.where((op == _SATURATION)[:, None, None, None], gray, 0.0))
        blended = jnp.clip(x * factor + target * (1.0 - factor), 0.0, 1.0)
        x = jnp.where((op == _HUE)[:, None, None, None], adjust_hue(x, hue), blended)
    return x
