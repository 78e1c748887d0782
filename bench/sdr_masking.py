"""Cost of masking: one SimSiam train step of the masked SDRnet on one path vs
the compact sub-net vs the plain full-width ResNet, and the memory SDR saves.

Two compact rows: the exported sub-net (its own variables, the floor) and compact execution
inside training (models/compact.py: the SDRnet's variables, the path a traced value, the
sub-net gathered at its own width in the step, gradients into the full weights), which is
what `sdr.subnet_exec='compact'` runs; it is also checked to compile once for every path.

  python bench/sdr_masking.py                 # ResNet-18 x0.25, 32x32, batch 64
  python bench/sdr_masking.py --groups=2 --repeats=20

Steps are interleaved (a, b, c, a, b, c, ...) so load drift hits all alike;
medians are printed side by side with ratios to the plain ResNet.
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from sdr_jax.methods.simsiam import simsiam_loss  # noqa: E402
from sdr_jax.models import build_model, model_config, path_spec  # noqa: E402
from sdr_jax.models.compact import CompactSubnets  # noqa: E402
from sdr_jax.models.export import export_subnet  # noqa: E402


def _variables(model, images, path, rng):
    """Random variables from the abstract init (compiling init costs more than the bench)."""
    shapes = jax.eval_shape(lambda x, p: model.init(jax.random.key(0), x, p, False), images, path)
    fill = lambda s: jnp.asarray(rng.normal(size=s.shape) * 0.05 + (s.shape[-1:] == s.shape), s.dtype)
    return jax.tree.map(fill, shapes)


def _train_step(model, tx):
    def loss_fn(params, batch_stats, x1, x2, path):
        o1, state = model.apply({"params": params, "batch_stats": batch_stats}, x1, path, True,
                                mutable=["batch_stats"])
        o2, state = model.apply({"params": params, **state}, x2, path, True, mutable=["batch_stats"])
        return simsiam_loss(o1["p"], o2["p"], o1["z"], o2["z"]), state["batch_stats"]

    def step(state, x1, x2, path):
        params, batch_stats, opt_state = state
        (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            params, batch_stats, x1, x2, path)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), batch_stats, opt_state), loss

    return jax.jit(step, donate_argnums=0)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--groups", type=int, default=4)
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()

    heads = dict(proj_dim=512, proj_layers=2, pred_dim=128, stem="small", width=args.width)
    sdr_cfg = model_config(args.arch, sdr=dict(num_groups=args.groups), **heads)
    plain_cfg = model_config(args.arch, sdr=dict(num_groups=0), **heads)
    spec = path_spec(sdr_cfg)
    rng = np.random.default_rng(0)
    x1, x2 = (jnp.asarray(rng.integers(0, 256, (args.batch, args.image_size, args.image_size, 3)), jnp.uint8)
              for _ in range(2))
    path = spec.index_to_path(0)

    sdr_model = build_model(sdr_cfg)
    sdr_vars = _variables(sdr_model, x1, path, rng)
    compact_model, compact_vars = export_subnet(sdr_cfg, sdr_vars, path)
    plain_model = build_model(plain_cfg)
    plain_vars = _variables(plain_model, x1, None, rng)

    tx = optax.sgd(0.05, momentum=0.9)
    runs = {}
    compact_in_training = CompactSubnets(sdr_model, spec.num_blocks)
    for name, model, variables, p in [("masked SDRnet, one path", sdr_model, sdr_vars, jnp.asarray(path)),
                                      ("compact, path as data", compact_in_training, sdr_vars,
                                       jnp.asarray(path)),
                                      ("exported compact sub-net", compact_model, compact_vars, None),
                                      ("plain ResNet (full width)", plain_model, plain_vars, None)]:
        # Copies: the step donates its state and must not delete the source variables.
        params = jax.tree.map(jnp.array, variables["params"])
        state = (params, jax.tree.map(jnp.array, variables["batch_stats"]), tx.init(params))
        step = _train_step(model, tx)
        state, loss = step(state, x1, x2, p)  # compile
        jax.block_until_ready(loss)
        runs[name] = {"step": step, "state": state, "path": p, "times": []}

    for _ in range(args.repeats):
        for run in runs.values():
            start = time.perf_counter()
            run["state"], loss = run["step"](run["state"], x1, x2, run["path"])
            jax.block_until_ready(loss)
            run["times"].append(time.perf_counter() - start)

    # The path is data: other paths of the stage run the same compiled step.
    run = runs["compact, path as data"]
    for other in spec.all_paths()[1:4]:
        run["state"], _ = run["step"](run["state"], x1, x2, jnp.asarray(other))
    assert run["step"]._cache_size() == 1, run["step"]._cache_size()

    print(f"{args.arch} x{args.width}, {args.image_size}x{args.image_size}, batch {args.batch} (two views), "
          f"G={args.groups}, shared 0.5, {args.repeats} interleaved repeats, {jax.devices()[0].platform}")
    plain_ms = np.median(runs["plain ResNet (full width)"]["times"]) * 1e3
    for name, run in runs.items():
        ms = np.median(run["times"]) * 1e3
        print(f"  {name:28s} {ms:8.1f} ms/step   {ms / plain_ms:5.2f}x plain")

    count = lambda tree: sum(a.size for a in jax.tree.leaves(tree))
    sdr_params = count(sdr_vars["params"]["backbone"])
    sub_total = sum(count(export_subnet(sdr_cfg, sdr_vars, p)[1]["params"]["backbone"])
                    for p in spec.all_paths())
    print(f"backbone params: SDRnet {sdr_params:,}; sum over {spec.num_paths} sub-nets {sub_total:,} "
          f"({sub_total / sdr_params:.1f}x); one sub-net {sub_total // spec.num_paths:,} "
          f"({sub_total / spec.num_paths / sdr_params:.1%})")


if __name__ == "__main__":
    main()
