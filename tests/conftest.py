"""Test set-up: 8 fake CPU devices, so distributed code is tested against one device."""
import os

# Must happen before JAX initialises its backends.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def small_mosaic_dir(tmp_path_factory):
    """A TFDS data_dir holding `mosaic/small` built from fake sources in the real formats.

    Training and routing tests read it through the normal `mosaic/small` name, so they need
    neither the real source packages nor a network.
    """
    from sdr_jax.data import datasets
    from tests import fixtures

    root = tmp_path_factory.mktemp("sources")
    fixtures.make_source_tree(root, n_per_class=6)
    data_dir = tmp_path_factory.mktemp("tfds")
    datasets.prepare_mosaic(data_dir, "small", manual_dir=root)
    return str(data_dir)
