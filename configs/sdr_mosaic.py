"""SDR on the embedded pool at 16x16, sized for a CPU: ResNet-18 x0.25 with the small-image stem,
4 SDR stages x 2 groups = 16 sub-nets, 4 paths per step, SiamKD λ=1.

  python launch/train.py --config=configs/sdr_mosaic.py --workdir=runs/sdr \\
      --config.sdr.assignments=runs/cluster/assignments.npz

`:tiny` is a seconds-long smoke test on `mosaic/small`; `:method=byol` (or `:tiny,method=byol`)
is SDR over BYOL instead of SimSiam.
"""
from sdr_jax.config_base import MOSAIC_IMAGE_SIZE, apply_variants, sdr_config, use_mosaic_recipe


def get_config(arg: str | None = None):
    config = sdr_config(dataset="mosaic", image_size=MOSAIC_IMAGE_SIZE, arch="resnet18",
                        width=0.25, stem="small", proj_dim=512, pred_dim=128, num_groups=2)
    config.model.sdr.num_paths = 16
    use_mosaic_recipe(config)
    config.sdr.paths_per_step = 4
    config.sdr.subnet_batch_size = 32
    return apply_variants(config, arg).lock()
