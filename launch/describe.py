"""Prints the SDR structure, parameter counts and FLOPs of a config's model.

  python launch/describe.py --config=configs/sdr256.py
  python launch/describe.py --config=configs/sdr_mosaic.py:tiny

FLOPs are XLA's `cost_analysis()` of the lowered eval forward for one image
(the masked SDRnet computes at full width whatever the path, so its FLOPs are
those of every path; a compact sub-net's are its own).
"""
from absl import app
import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import config_flags

from sdr_jax.jobs import cli
from sdr_jax.models import build_model, path_spec
from sdr_jax.models.export import export_subnet, forward_flops, param_count

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)


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
    backbone = model.backbone
    for s, (widths, layouts) in enumerate(zip(backbone.channel_widths(),
                                              backbone.channel_layouts())):
        if layouts is None:
            lines.append(f"stage {s}: {widths[-1]} channels, not an SDR block")
            continue
        widths = [f"{l.channels} channels = {l.shared} shared + {l.num_groups} groups x {l.group_width}"
                  for l in dict.fromkeys(layouts)]
        lines.append(f"stage {s}: " + " | ".join(widths))

    full_params = param_count(shapes["params"]["backbone"])
    full_flops = forward_flops(model, shapes, size, spec.full_path(), heads=True)
    lines.append(f"SDRnet: {full_params:,} backbone params (+{param_count(shapes['params']) - full_params:,} "
                 f"in the heads), {full_flops / 1e9:.4f} GFLOPs/image")
    if spec.num_groups:
        path = spec.index_to_path(0)
        zeros = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), shapes)
        compact, compact_vars = export_subnet(cfg, zeros, path)
        sub_params = param_count(compact_vars["params"]["backbone"])
        sub_flops = forward_flops(compact, compact_vars, size, None, heads=True)
        lines.append(f"sub-net {path.tolist()} (compact export): {sub_params:,} backbone params "
                     f"({sub_params / full_params:.1%}), {sub_flops / 1e9:.4f} GFLOPs/image "
                     f"({sub_flops / full_flops:.1%})")
        lines.append(f"all {spec.num_paths} sub-nets as separate nets: "
                     f"{spec.num_paths * sub_params:,} params ({spec.num_paths * sub_params / full_params:.1f}x "
                     f"the SDRnet)")
    lines.append("FLOPs: XLA cost_analysis() of the lowered eval forward (backbone + heads), batch 1")
    return "\n".join(lines)


def main(argv):
    del argv
    print(cli.run_or_fail(describe, _CONFIG.value))


if __name__ == "__main__":
    app.run(main)
