"""Routing cost: features of all G**L paths as a tree over shared prefixes vs the naive loop
of one full forward per path (one jitted function, the path as data), same data and weights.

  python bench/routing.py                    # ResNet-18 x0.25, 4 groups x 4 SDR stages, 32x32
  python bench/routing.py --arch=tiny --batch=32 --repeats=3

Steady-state times are medians over `repeats` passes, the two methods interleaved so load
drift hits both alike. Compile time is the first call minus one steady pass of the same work
(the tree's first call computes every path: timing that call alone, as this script did before
2026-11-26, counted a whole pass as compile time; on the 2-core CPU that was 4.9 s, of which
~1.3 s is XLA lowering and compiling the 5 level functions). Also checks they agree.
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from sdr_jax.jobs import route  # noqa: E402
from sdr_jax.models import build_model, model_config, path_spec  # noqa: E402


def _variables(model, images, path, rng):
    """Random variables from the abstract init (compiling init costs more than the bench)."""
    shapes = jax.eval_shape(lambda x, p: model.init(jax.random.key(0), x, p, False), images, path)
    fill = lambda s: jnp.asarray(rng.normal(size=s.shape) * 0.05 + (s.shape[-1:] == s.shape), s.dtype)
    return jax.tree.map(fill, shapes)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet18", choices=["resnet18", "tiny"])
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--groups", type=int, default=4)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    extra = {} if args.arch == "tiny" else {"width": args.width}
    cfg = model_config(args.arch, stem="small", proj_dim=64, pred_dim=16,
                       sdr=dict(num_groups=args.groups, stages=(0, 1, 2, 3)), **extra)
    model = build_model(cfg)
    spec = path_spec(cfg)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.batch, args.size, args.size, 3)).astype(np.uint8)
    variables = _variables(model, images, spec.full_path(), rng)
    all_paths = spec.all_paths()
    tree = route.PathTree(model, variables)
    naive_fn = jax.jit(lambda v, x, p: model.apply(v, x, p, False)["feature"])

    def naive():
        return np.stack([np.asarray(naive_fn(variables, images, jnp.asarray(p))) for p in all_paths])

    start = time.perf_counter()
    got = tree.features(images)
    tree_first = time.perf_counter() - start
    start = time.perf_counter()
    np.asarray(naive_fn(variables, images, jnp.asarray(all_paths[0])))
    naive_first = time.perf_counter() - start
    # Float32 at full precision agrees to 1e-4. XLA:GPU's default float32 matmul/conv precision
    # on Ampere and later is TF32 (10-bit mantissa), and the two methods sum in other orders:
    # there 2e-2 is the bound (JAX_DEFAULT_MATMUL_PRECISION=highest restores 1e-4).
    precision = jax.config.jax_default_matmul_precision or "default"
    exact = jax.default_backend() == "cpu" or precision in ("highest", "float32")
    tol = 1e-4 if exact else 2e-2
    want = naive()
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)
    print(f"tree == naive within {tol:g} (max abs diff {np.max(np.abs(got - want)):.2e}; "
          f"float32, matmul precision {precision} on {jax.default_backend()})")

    times = {"tree": [], "naive": []}
    for _ in range(args.repeats):
        for name, fn in (("tree", lambda: tree.features(images)), ("naive", naive)):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    tree_t, naive_t = (float(np.median(times[k])) for k in ("tree", "naive"))
    tree_compile = tree_first - tree_t                       # the first call ran every path
    naive_compile = naive_first - naive_t / len(all_paths)   # the first call ran one path
    work = args.batch * spec.num_paths
    print(f"{args.arch} x{args.width if args.arch != 'tiny' else 0.125}, {args.groups} groups x "
          f"{spec.num_blocks} SDR stages = {spec.num_paths} paths, batch {args.batch}, "
          f"{args.size}x{args.size}, {jax.device_count()} {jax.default_backend()} device(s)")
    print(f"{'method':<6} {'compile s':>10} {'pass s':>8} {'images*paths/s':>15} {'vs naive':>9}")
    print(f"{'naive':<6} {naive_compile:>10.2f} {naive_t:>8.3f} {work / naive_t:>15.0f} {1.0:>9.2f}")
    print(f"{'tree':<6} {tree_compile:>10.2f} {tree_t:>8.3f} {work / tree_t:>15.0f} "
          f"{tree_t / naive_t:>9.2f}")


if __name__ == "__main__":
    main()
