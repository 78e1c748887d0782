"""Clustering ImageNet into the 256 leaves of configs/sdr256.py (G=4, L=4), for SDR256.

  python launch/cluster.py --config=configs/cluster_imagenet.py --workdir=runs/imagenet/cluster \
      --config.pretrain_workdir=runs/imagenet/simsiam
`:tiny` clusters a tiny run for sdr256:tiny (256 leaves): give it at least ~10k examples
(e.g. --config.data.dataset=mosaic); the 1.5k of mosaic/small leave some leaves empty.
"""
from sdr_jax.config_base import check_variant, cluster_config


def get_config(arg: str | None = None):
    tiny = check_variant(arg) == "tiny"
    config = cluster_config(
        sdr_config="configs/sdr256.py:tiny" if tiny else "configs/sdr256.py",
        extract_batch_size=64 if tiny else 1024, images_per_cluster=6 if tiny else 12)
    # clustering defaults: 4096 per batch, 5 epochs per level (SwAV-like)
    if tiny:
        config.cluster.batch_size = 256
        config.cluster.epochs = 2
    return config.lock()
