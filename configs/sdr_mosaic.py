"""SDR on the embedded 32x32 pool, sized for a CPU: ResNet-18 x0.25 with the small-image stem,
4 SDR stages x 2 groups = 16 sub-nets, 4 paths per step, SiamKD λ=1.

  python launch/train.py --config=configs/sdr_mosaic.py --workdir=runs/sdr \\
      --config.sdr.assignments=runs/cluster/assignments.npz

`:tiny` is a seconds-long smoke test on `mosaic/small`.
"""
from sdr_jax.config_base import make_tiny, sdr_config
from sdr_jax.data.datasets import TASKS


def get_config(arg: str | None = None):
    config = sdr_config(dataset="mosaic", image_size=32, arch="resnet18", width=0.25,
                        stem="small", proj_dim=512, pred_dim=128, num_groups=2)
    config.model.sdr.num_paths = 16
    config.optim.batch_size = 256
    config.optim.weight_decay = 5e-4  # SimSiam's setting for 32x32 images
    config.train.num_epochs = 20
    config.train.log_every = 50
    config.train.checkpoint_every = 500
    config.train.knn_every = 2000
    config.eval.knn_tasks = tuple(TASKS)
    config.eval.knn_max_train = 5000
    config.sdr.paths_per_step = 4
    config.sdr.subnet_batch_size = 64
    if arg == "tiny":
        make_tiny(config)
        config.sdr.paths_per_step = 0
        config.sdr.subnet_batch_size = 8
    elif arg:
        raise ValueError(f"Unknown config variant {arg!r}: use ':tiny' or nothing.")
    return config.lock()
