"""Clustering ImageNet into the 256 leaves of configs/sdr256.py (G=4, L=4), for SDR256.

  python launch/cluster.py --config=configs/cluster_imagenet.py --workdir=gs://.../cluster \
      --config.pretrain_workdir=gs://.../simsiam
`:tiny` clusters a tiny run for sdr256:tiny (256 leaves): give it at least ~10k examples
(e.g. --config.data.dataset=mosaic); the 1.5k of mosaic/small leave some leaves empty.
"""
import ml_collections

from sdr_jax.cluster import clustering


def get_config(arg: str | None = None):
    if arg not in (None, "", "tiny"):
        raise ValueError(f"Unknown config variant {arg!r}: use ':tiny' or nothing.")
    tiny = arg == "tiny"
    config = ml_collections.ConfigDict()
    config.pretrain_workdir = ""           # --workdir of the SimSiam run (required)
    config.sdr_config = "configs/sdr256.py:tiny" if tiny else "configs/sdr256.py"
    config.data = ml_collections.ConfigDict()
    config.data.dataset = ""               # '' = the dataset/split/data_dir the run trained on
    config.data.split = ""
    config.data.data_dir = ""
    config.extract = ml_collections.ConfigDict()
    config.extract.batch_size = 64 if tiny else 1024
    config.cluster = clustering.get_config()  # 4096 per batch, 5 epochs per level (SwAV-like)
    if tiny:
        config.cluster.batch_size = 256
        config.cluster.epochs = 2
    config.report = ml_collections.ConfigDict()
    config.report.images_per_cluster = 6 if tiny else 12
    config.report.seed = 0
    return config.lock()
