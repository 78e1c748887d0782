"""XLA:CPU convolutions vs im2col patches @ kernel, per conv layer and in the whole SimSiam step.

`sdr_jax.models.backbones.base.conv` runs convolutions of tiny inputs (at most
`base.CPU_PATCHES_MAX_PIXELS` pixels) as one matmul over im2col patches when it is lowered for
the CPU (`lax.platform_dependent`; other backends keep `lax.conv_general_dilated`). This prints,
in one run:
  * per distinct conv layer of ResNet-18 x `--width` ('small' stem) at `--image_size`, batch
    `--batch` (one view): forward + backward (both gradients) time of `lax.conv_general_dilated`
    and of the patches, and which one the default threshold picks;
  * the SimSiam train step (`bench/train_step.py`'s, with the device augmentations) built with
    the patches off (`base.CPU_PATCHES_MAX_PIXELS = 0`: XLA's convolutions everywhere) and on,
    in alternating rounds. The per-layer figures are noisy and do not predict the step (fusions
    and layouts differ there): choose thresholds on the step.

  python bench/cpu_conv.py                       # the demo's step: 16x16, batch 64
  python bench/cpu_conv.py --image_size=32 --batch=128
"""
import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from sdr_jax.models.backbones import base
from train_step import step_images_per_s


def conv_layers(image_size: int, width: float) -> list[tuple[int, int, int, int, int]]:
    """Distinct (H, C_in, C_out, kernel, stride) of ResNet-18's convs, 'small' stem."""
    widths = base.stage_filters((2, 2, 2, 2), width)
    layers, size, cin = [(image_size, 3, widths[0], 3, 1)], image_size, widths[0]
    for s, w in enumerate(widths):
        stride = 1 if s == 0 else 2
        layers.append((size, cin, w, 3, stride))
        if stride == 2 or cin != w:
            layers.append((size, cin, w, 1, stride))
        size //= stride
        layers.append((size, w, w, 3, 1))
        cin = w
    return list(dict.fromkeys(layers))


def fwd_bwd_ms(conv_fn, x: jax.Array, w: jax.Array, repeats: int) -> float:
    grad = jax.jit(jax.grad(lambda x, w: jnp.sum(jnp.square(conv_fn(x, w))), argnums=(0, 1)))
    jax.block_until_ready(grad(x, w))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(grad(x, w))
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image_size", type=int, default=16)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per conv layer")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per step measurement")
    args = parser.parse_args()
    print(f"{jax.devices()[0].platform}, ResNet-18 x{args.width} ('small' stem), "
          f"{args.image_size}x{args.image_size}, batch {args.batch}")

    print("\nper conv layer, forward + backward (ms, median):")
    print(f"{'H':>3} {'in':>4} {'out':>4} {'k':>2} {'s':>2} | {'XLA conv':>9} {'patches':>9} "
          f"{'ratio':>6} | default")
    rng = np.random.default_rng(0)
    total = {"xla": 0.0, "patches": 0.0, "default": 0.0}
    for size, cin, cout, k, s in conv_layers(args.image_size, args.width):
        x = jnp.asarray(rng.standard_normal((args.batch, size, size, cin), np.float32))
        w = jnp.asarray(0.1 * rng.standard_normal((k, k, cin, cout), np.float32))
        pad = ((k // 2, k // 2),) * 2
        xla = fwd_bwd_ms(lambda x, w: jax.lax.conv_general_dilated(
            x, w, (s, s), pad, dimension_numbers=base.NHWC), x, w, args.repeats)
        patches = fwd_bwd_ms(lambda x, w: base.patches_conv(
            x, w, window_strides=(s, s), padding=pad, precision=None,
            preferred_element_type=None), x, w, args.repeats)
        picked = "patches" if base.cpu_patches_pay(x.shape) else "xla"
        total["xla"] += xla
        total["patches"] += patches
        total["default"] += patches if picked == "patches" else xla
        print(f"{size:3d} {cin:4d} {cout:4d} {k:2d} {s:2d} | {xla:9.2f} {patches:9.2f} "
              f"{patches / xla:5.2f}x | {picked}")
    print(f"sum over the distinct layers: XLA {total['xla']:.1f}, patches {total['patches']:.1f}, "
          f"default {total['default']:.1f} ms")

    print(f"\nSimSiam train step (two views), images/s, {args.rounds} alternating rounds:")
    default, rates = base.CPU_PATCHES_MAX_PIXELS, {False: [], True: []}
    for r in range(args.rounds):
        for on in rates:
            base.CPU_PATCHES_MAX_PIXELS = default if on else 0  # read when the step is traced
            rate, compile_s = step_images_per_s("resnet18", args.width, "small", args.image_size,
                                                args.batch, args.steps)
            rates[on].append(rate)
            print(f"  round {r}, patches {'on ' if on else 'off'}: {rate:7.1f} images/s "
                  f"({1e3 * args.batch / rate:6.1f} ms/step; compile {compile_s:.1f} s)")
    base.CPU_PATCHES_MAX_PIXELS = default
    off, on = statistics.median(rates[False]), statistics.median(rates[True])
    print(f"median: off {off:.1f}, on {on:.1f} images/s: the step takes {off / on:.2f}x the time "
          f"with the patches")


if __name__ == "__main__":
    main()
