"""BYOL on the embedded multi-domain pool (16x16 inputs), sized for a CPU: the same model and
recipe as configs/simsiam_mosaic.py (ResNet-18 x0.25, batch 64, SGD lr 0.2 * 64/256 cosine,
wd 5e-4), with BYOL's EMA target (base momentum 0.99, cosine to 1) and every weight, the
predictor included, on the one lr schedule.

  python launch/train.py --config=configs/byol_mosaic.py --workdir=runs/byol
  python launch/train.py --config=configs/byol_mosaic.py:tiny --workdir=/tmp/tiny
  python launch/pipeline.py --config=configs/pipeline_mosaic.py --config.method=byol ...
"""
from sdr_jax.config_base import (MOSAIC_IMAGE_SIZE, check_variant, make_tiny, simsiam_config,
                                 use_method, use_mosaic_recipe)


def get_config(arg: str | None = None):
    config = simsiam_config(dataset="mosaic", image_size=MOSAIC_IMAGE_SIZE, arch="resnet18",
                            width=0.25, stem="small", proj_dim=512, pred_dim=128)
    use_mosaic_recipe(config)
    use_method(config, "byol", base_momentum=0.99)
    config.optim.fix_pred_lr = False   # BYOL keeps no module at a fixed lr (methods/byol.py)
    # BYOL's asymmetric views, as far as they apply at 16 px: its blur (view 1 p=1.0, view 2
    # p=0.1) is off below 96 px in our recipe (config_base.BLUR_MIN_IMAGE_SIZE: a sigma of up
    # to 2 px would wipe out a 16 px image), so only the solarization differs (view 2 p=0.2).
    # configs/byol_imagenet.py has the whole recipe.
    config.data.aug.view2.solarize_prob = 0.2
    if check_variant(arg) == "tiny":
        make_tiny(config)
    return config.lock()
