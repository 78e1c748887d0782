"""Routing and downstream evaluation of a trained run (launch/route.py, launch/evaluate.py).

  python launch/route.py --task=mnist --workdir=runs/sdr
  python launch/route.py --config=configs/route.py:tiny --task=mnist --workdir=/tmp/tiny_sdr

Data come from the run's config (dataset variant, data_dir, image size) unless set here.
"""
import ml_collections


def get_config(arg=None):
    if arg not in (None, "", "tiny"):
        raise ValueError(f"configs/route.py takes no argument or 'tiny', got {arg!r}.")
    config = ml_collections.ConfigDict()
    config.data_dir = ""          # '' = the run's data.data_dir
    config.image_size = 0         # 0 = the run's data.image_size
    config.batch_size = 256       # images per tree pass (all paths of a batch at once)
    config.max_train = 0          # cap on the kNN memory / probe training set (0 = all)
    config.max_test = 0           # cap on the queries (0 = all)
    config.knn_k = 20
    config.knn_temperature = 0.1
    # 'recalibrate': each path's BN statistics re-estimated on the task's train images (the
    # deployed sub-net gets the same); 'running': the SDRnet's shared running statistics.
    config.bn = "recalibrate"
    config.bn_recal_images = 2048  # full batches of train images used for recalibration
    config.linear_steps = 500     # linear probe (evaluate.py): full-batch Adam steps
    config.linear_lr = 0.1
    config.linear_weight_decay = 1e-4
    if arg == "tiny":
        config.batch_size = 32
        config.max_train = 128
        config.max_test = 64
        config.bn_recal_images = 64
        config.linear_steps = 50
    return config.lock()
