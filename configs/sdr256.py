"""SDR on ImageNet: ResNet-50, 4 SDR stages x 4 groups = 256 sub-nets (DESIGN.md §2.3).

`--config=configs/sdr256.py:tiny` shrinks the model to a CPU smoke-test size
(same 256-path structure).
"""
import ml_collections

from sdr_jax.models import model_config


def get_config(arg=None):
    tiny = arg == "tiny"
    if arg not in (None, "", "tiny"):
        raise ValueError(f"configs/sdr256.py takes no argument or 'tiny', got {arg!r}.")
    config = ml_collections.ConfigDict()
    config.image_size = 32 if tiny else 224
    sdr = dict(num_groups=4, shared_fraction=0.5, stages=(0, 1, 2, 3), num_paths=256)
    if tiny:
        config.model = model_config("tiny", stem="imagenet", proj_dim=64, pred_dim=16, sdr=sdr)
    else:
        config.model = model_config("resnet50", stem="imagenet", proj_dim=2048, proj_layers=3,
                                    pred_dim=512, sdr=sdr)
    config.lock()
    return config
