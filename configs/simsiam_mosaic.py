"""SimSiam on the embedded multi-domain pool (16x16 inputs), sized for a CPU.

  python launch/train.py --config=configs/simsiam_mosaic.py --workdir=runs/simsiam
  python launch/train.py --config=configs/simsiam_mosaic.py:tiny --workdir=/tmp/tiny
"""
from sdr_jax.config_base import (MOSAIC_IMAGE_SIZE, check_variant, make_tiny, use_mosaic_recipe,
                                 simsiam_config)


def get_config(arg: str | None = None):
    config = simsiam_config(dataset="mosaic", image_size=MOSAIC_IMAGE_SIZE, arch="resnet18",
                            width=0.25, stem="small", proj_dim=512, pred_dim=128)
    use_mosaic_recipe(config)
    if check_variant(arg) == "tiny":
        make_tiny(config)
    return config.lock()
