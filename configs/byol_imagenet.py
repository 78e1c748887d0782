"""The published BYOL ImageNet recipe (Grill et al., 2020) at 100 epochs, the length of our
SimSiam ImageNet config: ResNet-50, batch 4096, LARS (trust coefficient 1e-3, momentum 0.9;
biases and BN parameters excluded from weight decay and the trust ratio), lr 0.45 * bs/256
with a 10-epoch linear warm-up then cosine, weight decay 1e-6, target EMA base momentum 0.99
(cosine to 1), every weight (the predictor included) on the one schedule. These are the
reference implementation's presets for 100 epochs (its 1000-epoch run: lr 0.2, wd 1.5e-6,
momentum 0.996). Needs `imagenet2012` prepared for TFDS (ArrayRecord) in data_dir.

Where our code differs from the paper (our choices, on purpose or for now):
  * heads: the projector is ours (`models/heads.py`: proj_layers x (Linear + BN), the last BN
    without affine, every layer proj_dim wide): 2 layers of 256 instead of BYOL's
    4096-hidden MLP with a plain linear output; the predictor is BYOL's (256 -> 4096 -> 256).
  * augmentations: BYOL's asymmetric recipe as per-view overrides of `config.data.aug`
    (random resized crop 0.08-1, flip, colour jitter .4/.4/.2/.1 p=.8, grayscale .2; view 1:
    blur p=1.0, no solarize; view 2: blur p=0.1, solarize p=0.2), as the paper. Its blur
    kernel is 23 px wide, ours 2 ceil(3 x 2.0) + 1 = 13 taps (+-3 of the largest sigma, 2.0).

  python launch/train.py --config=configs/byol_imagenet.py --workdir=runs/imagenet/byol
"""
from sdr_jax.config_base import (check_variant, make_tiny, simsiam_config, use_imagenet_scale,
                                 use_method)

IMAGENET_TRAIN_IMAGES = 1_281_167


def get_config(arg: str | None = None):
    config = simsiam_config(dataset="imagenet2012", split="train", image_size=224, arch="resnet50",
                            width=1.0, stem="imagenet", proj_dim=256, pred_dim=4096)
    use_method(config, "byol", base_momentum=0.99)
    config.optim.fix_pred_lr = False   # BYOL keeps no module at a fixed lr (methods/byol.py)
    config.model.proj_layers = 2
    use_imagenet_scale(config)
    config.optim.optimizer = "lars"
    config.optim.batch_size = 4096
    config.optim.base_lr = 0.45
    config.optim.weight_decay = 1e-6
    config.optim.warmup_steps = 10 * IMAGENET_TRAIN_IMAGES // 4096  # 10 epochs
    config.data.aug.crop_scale = (0.08, 1.0)
    config.data.aug.saturation = 0.2
    config.data.aug.view1.blur_prob = 1.0
    config.data.aug.view1.solarize_prob = 0.0
    config.data.aug.view2.blur_prob = 0.1
    config.data.aug.view2.solarize_prob = 0.2
    if check_variant(arg) == "tiny":
        make_tiny(config)
    return config.lock()
