"""Test set-up: 8 fake CPU devices, so distributed code is tested against one device."""
import os

# Must happen before JAX initialises its backends.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# XLA's persistent compilation cache: the many tiny models of the suite (and the launch scripts
# the tests run as subprocesses) compile the same programs again and again; the cache turns a
# repeat compile into a file read (a tiny SDR run: 65 s -> 18 s on 2 cores).
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(os.path.expanduser("~"), ".cache", "sdr_jax", "xla_tests"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

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
