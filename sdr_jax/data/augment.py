"""SimSiam / MoCo-v2 image augmentations on the host (numpy + PIL), DESIGN.md §2.1.

Training pipelines run `crop_and_flip` here (per image: decode, random-resized crop to the
output size, flip; uint8 out) and the colour work on the device, batched inside the jitted step
(`photometric.py`). The host colour ops below are the reference the device ops are tested
against; `augment` (all of it on the host) is the pre-device pipeline, kept as that reference
and as the baseline of bench/pipeline.py.

Semantics follow torchvision (RandomResizedCrop, RandomHorizontalFlip,
ColorJitter in random order, RandomGrayscale) and MoCo-v2's PIL GaussianBlur.
Colour ops take planar (3, H, W) float32 images in [0, 1] (contiguous per channel,
which is what makes them fast); the result is rounded to uint8 once, so the four
jitter ops do not each lose precision.

A recipe (`default_aug_config`) has per-view overrides `view1` / `view2`; `view_config(cfg, v)`
is view v's recipe, which the host's crop and the device's colour work both read.
"""
import math

import ml_collections
import numpy as np
from PIL import Image, ImageFilter

from sdr_jax import config_base
from sdr_jax.core.errors import ConfigError

# The recipe's fields are config data (sdr_jax/config_base.py); its checks and ops live here.
default_aug_config = config_base.default_aug_config

_INTERPOLATIONS = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}


VIEWS = (1, 2)


def view_config(cfg: ml_collections.ConfigDict, view: int) -> ml_collections.ConfigDict:
    """View `view`'s recipe: the common fields with the view's overrides (those not None)."""
    if view not in VIEWS:
        raise ValueError(f"view must be one of {VIEWS}, got {view}.")
    recipe = {k: v for k, v in cfg.items() if k not in ("view1", "view2")}
    overrides = cfg.get(f"view{view}") or {}
    recipe.update({k: v for k, v in overrides.items() if v is not None})
    return ml_collections.ConfigDict(recipe)


def validate_aug_config(cfg: ml_collections.ConfigDict) -> None:
    """Raises ConfigError naming the first bad field of an augmentation config (the common
    recipe and each view's)."""
    _validate_recipe(cfg)
    for view in VIEWS:
        overrides = cfg.get(f"view{view}") or {}
        unknown = sorted(set(overrides) - set(cfg) | ({"image_size"} & set(overrides)))
        if unknown:
            raise ConfigError(f"aug.view{view} cannot override {unknown}: it overrides the "
                              "recipe's fields (one image_size for both views).")
        try:
            _validate_recipe(view_config(cfg, view))
        except ConfigError as error:
            raise ConfigError(f"aug.view{view}: {error}") from None


def _validate_recipe(cfg: ml_collections.ConfigDict) -> None:
    if int(cfg.image_size) < 1:
        raise ConfigError(f"aug image_size must be >= 1, got {cfg.image_size}.")
    lo, hi = cfg.crop_scale
    if not 0 < lo <= hi <= 1:
        raise ConfigError(f"aug crop_scale must satisfy 0 < lo <= hi <= 1, got {cfg.crop_scale}.")
    lo, hi = cfg.crop_ratio
    if not 0 < lo <= hi:
        raise ConfigError(f"aug crop_ratio must satisfy 0 < lo <= hi, got {cfg.crop_ratio}.")
    if cfg.interpolation not in _INTERPOLATIONS:
        raise ConfigError(f"aug interpolation must be one of {sorted(_INTERPOLATIONS)}, "
                          f"got {cfg.interpolation!r}.")
    for name in ("flip_prob", "jitter_prob", "grayscale_prob", "blur_prob", "solarize_prob"):
        if not 0 <= cfg[name] <= 1:
            raise ConfigError(f"aug {name} must be a probability in [0, 1], got {cfg[name]}.")
    for name in ("brightness", "contrast", "saturation"):
        if cfg[name] < 0:
            raise ConfigError(f"aug {name} must be >= 0, got {cfg[name]}.")
    if not 0 <= cfg.hue <= 0.5:
        raise ConfigError(f"aug hue must be in [0, 0.5], got {cfg.hue}.")
    lo, hi = cfg.blur_sigma
    if not 0 < lo <= hi:
        raise ConfigError(f"aug blur_sigma must satisfy 0 < lo <= hi, got {cfg.blur_sigma}.")


def _check_image(image: np.ndarray) -> None:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"expected a uint8 (H, W, 3) image, got {image.dtype} {image.shape}; "
                         "convert grayscale/RGBA images to RGB first.")


def random_resized_crop_box(height: int, width: int, rng: np.random.Generator,
                            scale: tuple[float, float],
                            ratio: tuple[float, float]) -> tuple[int, int, int, int]:
    """(top, left, h, w) as torchvision: 10 tries, then a centre crop clamped to `ratio`."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


def luma(x: np.ndarray) -> np.ndarray:
    """ITU-R 601 luma of a planar (3, H, W) image, as torchvision's rgb_to_grayscale."""
    return 0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2]


def adjust_brightness(x: np.ndarray, factor: float) -> np.ndarray:
    return np.clip(x * factor, 0.0, 1.0)


def adjust_contrast(x: np.ndarray, factor: float) -> np.ndarray:
    mean = float(np.mean(luma(x)))
    return np.clip(x * factor + mean * (1.0 - factor), 0.0, 1.0)


def adjust_saturation(x: np.ndarray, factor: float) -> np.ndarray:
    return np.clip(x * factor + luma(x) * (1.0 - factor), 0.0, 1.0)


def adjust_hue(x: np.ndarray, shift: float) -> np.ndarray:
    """Rotates the HSV hue by `shift` turns; S and V (hence max and min) are unchanged.

    Uses the closed form f(n) = V - C * clip(min(k, 4 - k), 0, 1), k = (n + 6H) mod 6,
    so no full RGB->HSV->RGB round trip is needed.
    """
    r, g, b = x
    value = np.maximum(np.maximum(r, g), b)
    chroma = value - np.minimum(np.minimum(r, g), b)
    inv_chroma = np.divide(1.0, chroma, out=np.zeros_like(chroma), where=chroma > 0)
    hue6 = np.where(value == r, (g - b) * inv_chroma,
                    np.where(value == g, (b - r) * inv_chroma + 2.0, (r - g) * inv_chroma + 4.0))
    hue6 += 6.0 * shift
    out = np.empty_like(x)
    for channel, n in enumerate((5.0, 3.0, 1.0)):
        k = np.mod(hue6 + n, 6.0)
        np.minimum(k, 4.0 - k, out=k)
        np.clip(k, 0.0, 1.0, out=k)
        out[channel] = value - chroma * k
    return out


def to_grayscale(x: np.ndarray) -> np.ndarray:
    return np.broadcast_to(luma(x), x.shape)


def _jitter_factor(rng: np.random.Generator, strength: float) -> float:
    return float(rng.uniform(max(0.0, 1.0 - strength), 1.0 + strength))


def color_jitter(x: np.ndarray, rng: np.random.Generator,
                 cfg: ml_collections.ConfigDict) -> np.ndarray:
    """torchvision ColorJitter: factors drawn first, then the four ops in random order."""
    order = rng.permutation(4)
    brightness = _jitter_factor(rng, cfg.brightness)
    contrast = _jitter_factor(rng, cfg.contrast)
    saturation = _jitter_factor(rng, cfg.saturation)
    hue = float(rng.uniform(-cfg.hue, cfg.hue))
    for op in order:
        if op == 0:
            x = adjust_brightness(x, brightness)
        elif op == 1:
            x = adjust_contrast(x, contrast)
        elif op == 2:
            x = adjust_saturation(x, saturation)
        else:
            x = adjust_hue(x, hue)
    return x


def crop_and_flip(image: np.ndarray, rng: np.random.Generator,
                  cfg: ml_collections.ConfigDict) -> np.ndarray:
    """The host's share of one view: uint8 (H, W, 3) -> uint8 (S, S, 3), S = cfg.image_size.

    Random-resized crop, then a horizontal flip with probability `flip_prob`. Deterministic
    given the state of `rng`; draws what `augment` draws for its crop and flip.
    """
    _check_image(image)
    size = int(cfg.image_size)
    height, width = image.shape[:2]
    top, left, h, w = random_resized_crop_box(height, width, rng, cfg.crop_scale, cfg.crop_ratio)
    # Crop, then resize (antialiased when shrinking), as torchvision: PIL's `box=` argument
    # would also blend in pixels just outside the box.
    crop = Image.fromarray(image[top:top + h, left:left + w])
    out = np.asarray(crop.resize((size, size), _INTERPOLATIONS[cfg.interpolation]))
    if rng.random() < cfg.flip_prob:
        out = out[:, ::-1]
    return np.ascontiguousarray(out)


def augment(image: np.ndarray, rng: np.random.Generator,
            cfg: ml_collections.ConfigDict) -> np.ndarray:
    """One whole view on the host: uint8 (H, W, 3) -> uint8 (S, S, 3), S = cfg.image_size.

    Crop -> flip -> colour jitter -> grayscale -> blur -> solarize, each with its probability.
    Deterministic given the state of `rng`. Training runs `crop_and_flip` here and the rest on
    the device (`photometric.augment_batch`); this is the reference and the benchmark baseline.
    """
    out = crop_and_flip(image, rng, cfg)
    jitter = rng.random() < cfg.jitter_prob
    gray = rng.random() < cfg.grayscale_prob
    if jitter or gray:
        # Planar (3, S, S) float32 keeps every per-channel op on contiguous memory.
        x = out.transpose(2, 0, 1).astype(np.float32, order="C") * (1.0 / 255.0)
        if jitter:
            x = color_jitter(x, rng, cfg)
        if gray:
            x = to_grayscale(x)
        out = np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8).transpose(1, 2, 0)
    if rng.random() < cfg.blur_prob:
        sigma = float(rng.uniform(cfg.blur_sigma[0], cfg.blur_sigma[1]))
        out = np.asarray(Image.fromarray(out).filter(ImageFilter.GaussianBlur(radius=sigma)))
    # Drawn only when enabled, so recipes without solarization keep their random streams.
    if cfg.get("solarize_prob", 0.0) > 0 and rng.random() < cfg.solarize_prob:
        out = np.where(out < 128, out, 255 - out).astype(np.uint8)
    return np.ascontiguousarray(out)


def center_resize(image: np.ndarray, size: int) -> np.ndarray:
    """Evaluation view: shorter side resized to `size`, then the centre `size` x `size`.

    Done as one resize of the centre square; identity when already size x size.
    """
    _check_image(image)
    height, width = image.shape[:2]
    if height == size and width == size:
        return image
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = Image.fromarray(image[top:top + side, left:left + side])
    return np.asarray(square.resize((size, size), Image.Resampling.BILINEAR))
