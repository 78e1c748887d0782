"""Routing and downstream evaluation of a trained run (launch/route.py, launch/evaluate.py).

  python launch/route.py --task=mnist --workdir=runs/sdr
  python launch/route.py --config=configs/route.py:tiny --task=mnist --workdir=/tmp/tiny_sdr

Data come from the run's config (dataset variant, data_dir, image size) unless set here.
The evaluation protocol (split, baselines, intervals) is `sdr_jax/eval/protocol.py`; every
field below from `bn` on is part of it (a pipeline refuses to mix results made with others).
"""
import ml_collections

from sdr_jax.config_base import check_variant


def get_config(arg=None):
    check_variant(arg)
    config = ml_collections.ConfigDict()
    config.data_dir = ""          # '' = the run's data.data_dir
    config.image_size = 0         # 0 = the run's data.image_size
    config.batch_size = 256       # images per tree pass (all paths of a batch at once)
    # 'recalibrate': each path's BN statistics re-estimated on the task's train images (the
    # deployed sub-net gets the same); 'running': the SDRnet's shared running statistics.
    config.bn = "recalibrate"
    config.bn_recal_images = 2048  # full batches of train images used for recalibration
    config.max_train = 0          # cap on the task's train images (0 = all): validation + memory
    config.max_test = 0           # cap on the test queries (0 = all)
    # The share of the (capped) train images held out to select the path (routing-validation);
    # the rest is the kNN memory / probe training set. A seeded permutation of the ids.
    config.val_fraction = 0.2
    config.split_seed = 0
    config.knn_k = 20
    config.knn_temperature = 0.1
    config.random_init_seed = 0   # the random-init baseline's initialisation
    config.linear_steps = 500     # linear probe: full-batch Adam steps
    config.linear_lr = 0.1
    # The probe's weight decay is chosen among these on the routing-validation split.
    config.linear_weight_decays = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
    if arg == "tiny":
        config.batch_size = 32
        config.max_train = 128
        config.max_test = 64
        config.bn_recal_images = 64
        config.linear_steps = 50
        config.linear_weight_decays = (1e-4, 1e-2)
    return config.lock()
