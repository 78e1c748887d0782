"""SimSiam on the embedded multi-domain pool (32x32 images), sized for a CPU.

  python launch/train.py --config=configs/simsiam_mosaic.py --workdir=runs/simsiam
  python launch/train.py --config=configs/simsiam_mosaic.py:tiny --workdir=/tmp/tiny
"""
from sdr_jax.config_base import make_tiny, simsiam_config
from sdr_jax.data.datasets import TASKS


def get_config(arg: str | None = None):
    config = simsiam_config(dataset="mosaic", image_size=32, arch="resnet18", width=0.25,
                            stem="small", proj_dim=512, pred_dim=128)
    config.optim.batch_size = 256
    config.optim.weight_decay = 5e-4  # SimSiam's setting for 32x32 images
    config.train.num_epochs = 20
    config.train.log_every = 50
    config.train.checkpoint_every = 500
    config.train.knn_every = 2000
    config.eval.knn_tasks = tuple(TASKS)
    config.eval.knn_max_train = 5000
    if arg == "tiny":
        make_tiny(config)
    elif arg:
        raise ValueError(f"Unknown config variant {arg!r}: use ':tiny' or nothing.")
    return config.lock()
