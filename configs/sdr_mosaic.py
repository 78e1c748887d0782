"""SDR on the embedded pool at 16x16, sized for a CPU: ResNet-18 x0.25 with the small-image stem,
4 SDR stages x 2 groups = 16 sub-nets, 4 paths per step, SiamKD λ=1.

  python launch/train.py --config=configs/sdr_mosaic.py --workdir=runs/sdr \\
      --config.sdr.assignments=runs/cluster/assignments.npz

`:tiny` is a seconds-long smoke test on `mosaic/small`; `:method=byol` (or `:tiny,method=byol`)
is SDR over BYOL instead of SimSiam. `:GxL` (e.g. `:2x2`, `:tiny,2x2`) sets G groups in the last
L ResNet stages (G^L sub-nets): the number-of-sub-nets ablation (docs/RESULTS.md), and what a
clustering job's `sdr_config` names for that SDRnet.
"""
from sdr_jax.config_base import MOSAIC_IMAGE_SIZE, apply_variants, sdr_config, use_mosaic_recipe
from sdr_jax.core.errors import ConfigError


def get_config(arg: str | None = None):
    parts = [part for part in (arg or "").split(",") if part]
    shapes = [part for part in parts if _is_shape(part)]
    rest = [part for part in parts if not _is_shape(part)]  # ':tiny', ':method=NAME'
    if len(shapes) > 1:
        raise ConfigError(f"config variant {arg!r} gives {len(shapes)} shapes; give one ':GxL'.")
    groups, blocks = (int(x) for x in shapes[0].split("x")) if shapes else (2, 4)
    config = sdr_config(dataset="mosaic", image_size=MOSAIC_IMAGE_SIZE, arch="resnet18",
                        width=0.25, stem="small", proj_dim=512, pred_dim=128, num_groups=groups,
                        stages=tuple(range(4 - blocks, 4)))
    config.model.sdr.num_paths = groups ** blocks
    use_mosaic_recipe(config)
    config.sdr.paths_per_step = min(4, groups ** blocks)
    config.sdr.subnet_batch_size = 32
    return apply_variants(config, ",".join(rest)).lock()


def _is_shape(text: str) -> bool:
    groups, _, blocks = text.partition("x")
    return groups.isdigit() and blocks.isdigit() and int(groups) >= 1 and 1 <= int(blocks) <= 4
