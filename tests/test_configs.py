"""Configs are inert data: parsing one imports no JAX, model code, TFDS or job."""
import glob
import json
import os
import subprocess
import sys

import pytest

from sdr_jax import config_base
from sdr_jax.core.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "configs", "*.py")))
# Top-level packages, and sdr_jax packages, that parsing a config must not import.
HEAVY = ("jax", "jaxlib", "flax", "optax", "orbax", "tensorflow", "tensorflow_datasets", "grain",
         "numpy", "PIL")
HEAVY_SDR = ("models", "data", "methods", "eval", "train", "jobs")


def test_parsing_every_config_imports_nothing_heavy():
    code = (
        "import json, sys\n"
        "from sdr_jax.config_base import load_config_file\n"
        f"for spec in {CONFIGS!r}:\n"
        "    for variant in ('', ':tiny'):\n"
        "        load_config_file(spec + variant)\n"
        "print(json.dumps(sorted(sys.modules)))\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": ROOT})
    assert done.returncode == 0, done.stderr[-2000:]
    modules = json.loads(done.stdout.splitlines()[-1])
    heavy = [m for m in modules if m.split(".")[0] in HEAVY
             or (m.startswith("sdr_jax.") and m.split(".")[1] in HEAVY_SDR)]
    assert not heavy, f"parsing the configs imported {heavy}"
    assert len(CONFIGS) >= 8


def test_config_defaults_agree_with_the_code_that_reads_them():
    from sdr_jax import models
    from sdr_jax.data import augment, datasets, mosaic
    assert config_base.MOSAIC_TASKS == tuple(datasets.TASKS) == mosaic.DOMAIN_NAMES
    assert augment.default_aug_config is config_base.default_aug_config
    assert config_base.TINY_WIDTH == models.ARCHS["tiny"].keywords["width"]
    tiny = config_base.load_config_file("configs/simsiam_mosaic.py:tiny")
    assert tiny.model == models.model_config("tiny", stem="small", proj_dim=32, pred_dim=16,
                                             sdr=dict(num_groups=0))
    for arch in models.ARCHS:  # the arch's own width unless given
        assert models.model_config(arch).width == models.ARCHS[arch].keywords.get("width", 1.0)
    models.build_model(tiny.model)


def test_one_cluster_config_definition():
    from sdr_jax.jobs.cluster import clustering
    assert clustering.ClusterConfig is config_base.ClusterConfig
    assert not hasattr(clustering, "get_config")
    for spec in ("configs/cluster_mosaic.py", "configs/cluster_imagenet.py:tiny"):
        cluster = config_base.load_config_file(spec).cluster
        assert set(cluster) == set(config_base.ClusterConfig().to_config())
        config_base.ClusterConfig.from_mapping(cluster)


@pytest.mark.parametrize("spec", [c + ":huge" for c in CONFIGS])
def test_an_unknown_variant_is_a_config_error(spec):
    with pytest.raises(ConfigError, match="unknown config variant 'huge'"):
        config_base.load_config_file(spec)


def test_config_errors():
    with pytest.raises(ConfigError, match="not found"):
        config_base.load_config_file("configs/nope.py")
    with pytest.raises(ConfigError, match="Unknown field model.sdr.groups"):
        config_base.model_config("resnet18", sdr=dict(groups=2))
    with pytest.raises(ConfigError, match="epsilon must be > 0"):
        config_base.ClusterConfig(epsilon=0.0)
    with pytest.raises(ConfigError, match="unknown clustering config keys"):
        config_base.ClusterConfig.from_mapping({"epoch": 3})
