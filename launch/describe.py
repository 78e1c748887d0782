"""Prints the SDR structure, parameter counts and FLOPs of a config's model.

  python launch/describe.py --config=configs/sdr256.py
  python launch/describe.py --config=configs/sdr_mosaic.py:tiny

FLOPs are XLA's `cost_analysis()` of the compiled eval forward for one image
(the masked SDRnet computes at full width whatever the path, so its FLOPs are
those of every path; a compact sub-net's are its own).
"""
from absl import app
import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import config_flags

from sdr_jax.models import build_model, path_spec, resnet, sdr_layout
from sdr_jax.models.export import export_subnet

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)


def _flops(model, variables, image_shape, path) -> float:
    forward = jax.jit(lambda v, x: model.apply(v, x, path, False))
    cost = forward.lower(variables, jax.ShapeDtypeStruct(image_shape, jnp.uint8)).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost["flops"])


def _count(tree) -> int:
    return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(tree))


def describe(config) -> str:
    """The report `main` prints (a function, so tests can call it too)."""
    cfg = config.model
    model = build_model(cfg)
    spec = path_spec(cfg)
    size = config.data.image_size
    image_shape = (1, size, size, 3)
    shapes = jax.eval_shape(lambda x, p: model.init(jax.random.key(0), x, p, False),
                            jax.ShapeDtypeStruct(image_shape, jnp.uint8), spec.full_path())
    lines = [f"arch: {cfg.arch} (width {cfg.width}, {cfg.stem} stem, {cfg.dtype})",
             f"image size: {size}",
             f"paths: {spec.num_paths} ({spec.num_groups} groups x {spec.num_blocks} SDR blocks)"]
    filters = resnet.stage_filters(model.stage_sizes, cfg.width)
    for s, layouts in enumerate(resnet.stage_layouts(filters, model.block_cls.expansion, sdr_layout(cfg))):
        if layouts[0] is None:
            lines.append(f"stage {s}: {filters[s] * model.block_cls.expansion} channels, not an SDR block")
            continue
        widths = [f"{l.channels} channels = {l.shared} shared + {l.num_groups} groups x {l.group_width}"
                  for l in dict.fromkeys(layouts)]
        lines.append(f"stage {s}: " + " | ".join(widths))

    full_params = _count(shapes["params"]["backbone"])
    full_flops = _flops(model, shapes, image_shape, spec.full_path())
    lines.append(f"SDRnet: {full_params:,} backbone params (+{_count(shapes['params']) - full_params:,} "
                 f"in the heads), {full_flops / 1e9:.4f} GFLOPs/image")
    if spec.num_groups:
        path = spec.index_to_path(0)
        zeros = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), shapes)
        compact, compact_vars = export_subnet(cfg, zeros, path)
        sub_params = _count(compact_vars["params"]["backbone"])
        sub_flops = _flops(compact, compact_vars, image_shape, None)
        lines.append(f"sub-net {path.tolist()} (compact export): {sub_params:,} backbone params "
                     f"({sub_params / full_params:.1%}), {sub_flops / 1e9:.4f} GFLOPs/image "
                     f"({sub_flops / full_flops:.1%})")
        lines.append(f"all {spec.num_paths} sub-nets as separate nets: "
                     f"{spec.num_paths * sub_params:,} params ({spec.num_paths * sub_params / full_params:.1f}x "
                     f"the SDRnet)")
    lines.append("FLOPs: XLA cost_analysis() of the compiled eval forward (backbone + heads), batch 1")
    return "\n".join(lines)


def main(argv):
    del argv
    print(describe(_CONFIG.value))


if __name__ == "__main__":
    app.run(main)
