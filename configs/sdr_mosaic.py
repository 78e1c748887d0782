"""SDR on the CPU-sized 32x32 mosaic dataset (DESIGN.md §5).

ResNet-18 x0.25 with the small-image stem, 4 SDR stages x 2 groups = 16
sub-nets, CIFAR-style SimSiam heads. `:tiny` for smoke tests.
"""
import ml_collections

from sdr_jax.models import model_config


def get_config(arg=None):
    tiny = arg == "tiny"
    if arg not in (None, "", "tiny"):
        raise ValueError(f"configs/sdr_mosaic.py takes no argument or 'tiny', got {arg!r}.")
    config = ml_collections.ConfigDict()
    config.image_size = 32
    sdr = dict(num_groups=2, shared_fraction=0.5, stages=(0, 1, 2, 3), num_paths=16)
    if tiny:
        config.model = model_config("tiny", stem="small", proj_dim=32, pred_dim=8, sdr=sdr)
    else:
        config.model = model_config("resnet18", width=0.25, stem="small", proj_dim=512,
                                    proj_layers=2, pred_dim=128, sdr=sdr)
    config.lock()
    return config
