"""SDR on ImageNet: ResNet-50, 4 SDR stages x 4 groups = 256 sub-nets (DESIGN.md §2.3-2.5),
the SimSiam ImageNet recipe (batch 512, SGD lr 0.05·bs/256 cosine, wd 1e-4, fixed predictor lr),
8 paths per step (one per device of an 8-accelerator host; more on pods), SiamKD λ=1.

  python launch/cluster.py --config=configs/cluster_imagenet.py --workdir=runs/imagenet/cluster
  python launch/train.py --config=configs/sdr256.py --workdir=runs/imagenet/sdr256 \\
      --config.sdr.assignments=runs/imagenet/cluster/assignments.npz

`:tiny` keeps the 256-path structure with a tiny model on `mosaic/small` (CPU smoke test);
`:method=byol` (or `:tiny,method=byol`) is SDR over BYOL instead of SimSiam.
"""
from sdr_jax.config_base import apply_variants, sdr_config, use_imagenet_scale


def get_config(arg: str | None = None):
    config = sdr_config(dataset="imagenet2012", split="train", image_size=224, arch="resnet50",
                        width=1.0, stem="imagenet", proj_dim=2048, pred_dim=512, num_groups=4)
    config.model.sdr.num_paths = 256
    use_imagenet_scale(config)
    config.sdr.paths_per_step = 8
    config.sdr.subnet_batch_size = 64
    return apply_variants(config, arg).lock()
