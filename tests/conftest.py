"""Test set-up: 8 fake CPU devices, so distributed code is tested against one device."""
import os

# Must happen before JAX initialises its backends. The suite's cost is XLA:CPU compiling many
# tiny programs, not running them: LLVM at -O0 compiles them ~1.5x faster. Same computation up
# to float32 rounding (a tiny SDRnet's gradients: 3e-6 relative vs the default -O2); a test that
# compares bits compares two runs under the same flags. Tests' subprocesses get these flags too
# (`fixtures.xla_flags`).
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8 "
                                   "--xla_backend_optimization_level=0")
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


@pytest.fixture(scope="session")
def tiny_simsiam_run(small_mosaic_dir, tmp_path_factory):
    """One finished tiny SimSiam run (`fixtures.tiny_simsiam_config`) for the tests that only
    read it (copy it before changing anything)."""
    from sdr_jax.train import pretrain as simsiam
    from tests import fixtures

    workdir = str(tmp_path_factory.mktemp("shared_run") / "simsiam")
    simsiam.train_and_evaluate(fixtures.tiny_simsiam_config(small_mosaic_dir), workdir)
    return workdir


@pytest.fixture(scope="session")
def tiny_mosaic(tmp_path_factory):
    """(source root, distinct images per domain, data_dir) of mosaic built with
    `fixtures.tiny_mosaic_config()` from 4 fake images per class: the builder's own tests read
    it (the training tests use `small_mosaic_dir`)."""
    from sdr_jax.data import datasets
    from tests import fixtures

    root = tmp_path_factory.mktemp("tiny_sources")
    counts = fixtures.make_source_tree(root, n_per_class=4)
    data_dir = tmp_path_factory.mktemp("tiny_tfds")
    datasets.prepare_mosaic(data_dir, fixtures.tiny_mosaic_config(), manual_dir=root)
    return root, counts, data_dir
