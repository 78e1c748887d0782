"""The published SimSiam ImageNet recipe (Chen & He, 2021): ResNet-50, batch 512, SGD
lr 0.05 * bs/256 cosine, wd 1e-4, momentum 0.9, fixed predictor lr, 100 epochs, MoCo-v2
augmentations with blur. Needs `imagenet2012` prepared for TFDS (ArrayRecord) in data_dir.

  python launch/train.py --config=configs/simsiam_imagenet.py --workdir=runs/imagenet/simsiam
"""
from sdr_jax.config_base import check_variant, make_tiny, simsiam_config, use_imagenet_scale


def get_config(arg: str | None = None):
    config = simsiam_config(dataset="imagenet2012", split="train", image_size=224, arch="resnet50",
                            width=1.0, stem="imagenet", proj_dim=2048, pred_dim=512)
    use_imagenet_scale(config)
    if check_variant(arg) == "tiny":
        make_tiny(config)
    return config.lock()
