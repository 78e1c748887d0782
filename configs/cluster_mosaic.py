"""Clustering the embedded mosaic pool for SDR (DESIGN.md §2.2), sized for a CPU.

G and L come from the SDR config named by `sdr_config` (the model the clusters are for).

  python launch/cluster.py --config=configs/cluster_mosaic.py --workdir=runs/cluster \
      --config.pretrain_workdir=runs/simsiam
  python launch/cluster.py --config=configs/cluster_mosaic.py:tiny ...   (mosaic/small, tiny SDR)
"""
from sdr_jax.config_base import check_variant, cluster_config


def get_config(arg: str | None = None):
    tiny = check_variant(arg) == "tiny"
    config = cluster_config(
        sdr_config="configs/sdr_mosaic.py:tiny" if tiny else "configs/sdr_mosaic.py",
        extract_batch_size=64 if tiny else 512, images_per_cluster=6 if tiny else 16)
    config.cluster.batch_size = 256 if tiny else 2048
    config.cluster.epochs = 2 if tiny else 10
    return config.lock()
