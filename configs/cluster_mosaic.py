"""Clustering the embedded mosaic pool for SDR (DESIGN.md §2.2), sized for a CPU.

G and L come from the SDR config named by `sdr_config` (the model the clusters are for).

  python launch/cluster.py --config=configs/cluster_mosaic.py --workdir=runs/cluster \
      --config.pretrain_workdir=runs/simsiam
  python launch/cluster.py --config=configs/cluster_mosaic.py:tiny ...   (mosaic/small, tiny SDR)
"""
import ml_collections

from sdr_jax.cluster import clustering


def get_config(arg: str | None = None):
    if arg not in (None, "", "tiny"):
        raise ValueError(f"Unknown config variant {arg!r}: use ':tiny' or nothing.")
    tiny = arg == "tiny"
    config = ml_collections.ConfigDict()
    config.pretrain_workdir = ""           # --workdir of the SimSiam run (required)
    config.sdr_config = "configs/sdr_mosaic.py:tiny" if tiny else "configs/sdr_mosaic.py"
    config.data = ml_collections.ConfigDict()
    config.data.dataset = ""               # '' = the dataset/split/data_dir the run trained on
    config.data.split = ""
    config.data.data_dir = ""
    config.extract = ml_collections.ConfigDict()
    config.extract.batch_size = 64 if tiny else 512
    config.cluster = clustering.get_config()
    config.cluster.batch_size = 256 if tiny else 2048
    config.cluster.epochs = 2 if tiny else 10
    config.report = ml_collections.ConfigDict()
    config.report.images_per_cluster = 6 if tiny else 16
    config.report.seed = 0
    return config.lock()
