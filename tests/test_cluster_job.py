"""The clustering job end to end: tiny SimSiam run -> features -> assignments -> reports."""
import importlib.util
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from sdr_jax.data import assignments as assignments_lib
from sdr_jax.jobs.cluster import job
from sdr_jax.jobs.cluster.store import FeatureStore, FeatureWriter
from sdr_jax.data import datasets
from sdr_jax.core.errors import CheckpointError, ConfigError
from sdr_jax.train import pretrain as simsiam

pytestmark = pytest.mark.slow  # every test here runs a tiny run or a notebook

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(name, arg="tiny", **overrides):
    spec = importlib.util.spec_from_file_location("c", os.path.join(REPO, "configs", name))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(arg).unlock()
    for key, value in overrides.items():
        section, _, field = key.rpartition(".")
        (config[section] if section else config)[field] = value
    return config.lock()


PRETRAIN_STEPS = 6  # the shared tiny SimSiam run's


@pytest.fixture(scope="module")
def pretrain_run(tiny_simsiam_run):
    return tiny_simsiam_run  # read only


@pytest.fixture(scope="module")
def finished_job(pretrain_run, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("cluster"))
    config = load_config("cluster_mosaic.py", pretrain_workdir=pretrain_run)
    return workdir, job.run(config, workdir)


def pool_ids(data_dir):
    return job.read_examples(datasets.open_source("mosaic/small", "pool", data_dir)).ids


def test_assignments_cover_the_pool_once_with_provenance(finished_job, pretrain_run,
                                                         small_mosaic_dir):
    workdir, result = finished_job
    ids = pool_ids(small_mosaic_dir)
    # G=2, L=4 from configs/sdr_mosaic.py:tiny; load() also checks ids == the pool's ids.
    a = assignments_lib.load(os.path.join(workdir, "assignments.npz"), num_groups=2,
                             num_blocks=4, dataset_ids=ids)
    assert len(a.ids) == len(ids) == len(np.unique(a.ids))
    assert np.array_equal(np.unique(a.leaves), np.arange(16))
    assert a.provenance["checkpoint"] == os.path.abspath(pretrain_run)
    assert a.provenance["step"] == PRETRAIN_STEPS
    assert (a.provenance["dataset"], a.provenance["split"]) == ("mosaic/small", "pool")
    assert a.provenance["config"]["sdr_config"] == "configs/sdr_mosaic.py:tiny"
    assert a.provenance["cluster_config"]["epochs"] == 2
    store = FeatureStore(os.path.join(workdir, "features"))
    assert store.metadata["step"] == PRETRAIN_STEPS and np.array_equal(store.ids, a.ids)
    _, feats = store.load_all()
    np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1.0, rtol=1e-5)
    assert sum(result["sizes"]["1"]) == len(ids) and len(result["sizes"]["4"]) == 16


def test_reports_written(finished_job):
    workdir, result = finished_job
    with open(os.path.join(workdir, "clusters.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with open(os.path.join(workdir, "summary.json")) as f:
        saved = json.load(f)
    assert set(saved["scores"]) == {"top vs domain", "leaf vs domain", "top vs domain+label",
                                    "leaf vs domain+label"}
    for score in saved["scores"].values():
        assert 0 <= score["nmi"] <= 1 and 0 < score["purity"] <= 1
    counts = np.asarray(saved["top_clusters"]["counts"])
    assert counts.shape == (2, 5) and counts.sum() == saved["num_examples"]
    with open(os.path.join(workdir, "summary.txt")) as f:
        text = f.read()
    assert "top-level clusters vs domain" in text and "clipart" in text


def test_features_match_extract_features(finished_job, pretrain_run, small_mosaic_dir):
    """The streamed store holds what the in-memory extract_features computes."""
    import jax
    import jax.numpy as jnp

    from sdr_jax import models
    from sdr_jax.eval import features as features_lib
    from sdr_jax.train import checkpoint
    from sdr_jax.core import mesh as mesh_lib

    config, variables, _ = checkpoint.load_run(pretrain_run)
    model = models.build_model(config.model)
    path = jnp.asarray(models.path_spec(config.model).full_path())
    mesh = mesh_lib.make_data_mesh(jax.devices()[:1])
    fn = features_lib.jit_feature_fn(
        lambda x: model.apply(variables, x, path, train=False)["feature"], mesh)
    source = datasets.open_source("mosaic/small", "pool", small_mosaic_dir)
    feats, _, ids = features_lib.extract_features(fn, source, batch_size=48, image_size=32,
                                                  mesh=mesh, max_examples=100)
    store = FeatureStore(os.path.join(finished_job[0], "features"))
    rows = np.searchsorted(store.ids, ids, sorter=np.argsort(store.ids))
    stored = store.read(np.argsort(store.ids)[rows])
    np.testing.assert_allclose(stored, feats / np.linalg.norm(feats, axis=1, keepdims=True),
                               atol=1e-5)


def test_rerun_skips_both_stages(finished_job, pretrain_run):
    workdir, _ = finished_job
    before = {name: os.path.getmtime(os.path.join(workdir, name))
              for name in ("features/index.json", "assignments.npz")}
    result = job.run(load_config("cluster_mosaic.py", pretrain_workdir=pretrain_run), workdir)
    assert result["skipped"] == {"features": True, "clustering": True}
    assert before == {name: os.path.getmtime(os.path.join(workdir, name)) for name in before}


def run_cli(*args):
    return subprocess.run([sys.executable, os.path.join(REPO, "launch/cluster.py"), *args],
                          cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": REPO})


def test_cli_end_to_end_then_refuses_another_sdr_shape(pretrain_run, tmp_path):
    workdir = str(tmp_path / "cluster")
    base = ["--config=configs/cluster_mosaic.py:tiny", f"--workdir={workdir}",
            f"--config.pretrain_workdir={pretrain_run}"]
    out = run_cli(*base)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "top-level clusters vs domain" in out.stdout
    assert os.path.isfile(os.path.join(workdir, "clusters.png"))
    # The same workdir for a model of another G/L (sdr256:tiny is G=4, L=4): one line, exit 1.
    out = run_cli(*base, "--config.sdr_config=configs/sdr256.py:tiny")
    assert out.returncode == 1
    assert out.stderr.strip().splitlines() == [out.stderr.strip()]
    assert "num_groups (G)=2" in out.stderr and "expects 4" in out.stderr


@pytest.mark.parametrize("make_workdir", ["missing", "not_a_run"])
def test_cli_pretrain_workdir_not_a_run(tmp_path, make_workdir):
    pretrain = tmp_path / "pretrain"
    if make_workdir == "not_a_run":
        pretrain.mkdir()
    out = run_cli("--config=configs/cluster_mosaic.py:tiny", f"--workdir={tmp_path / 'c'}",
                  f"--config.pretrain_workdir={pretrain}")
    assert out.returncode == 1
    assert out.stderr.startswith("error:") and len(out.stderr.strip().splitlines()) == 1
    assert "not a training workdir" in out.stderr
    assert not (tmp_path / "c").exists()


def test_pretrain_workdir_without_checkpoint(tmp_path, pretrain_run):
    workdir = tmp_path / "run"
    workdir.mkdir()
    shutil.copy(os.path.join(pretrain_run, "config.json"), workdir)
    with pytest.raises(CheckpointError, match="has no checkpoint"):
        job.run(load_config("cluster_mosaic.py", pretrain_workdir=str(workdir)),
                str(tmp_path / "c"))


def test_features_of_other_ids_are_refused(finished_job, pretrain_run, tmp_path):
    workdir = str(tmp_path / "c")
    os.makedirs(workdir)
    good = FeatureStore(os.path.join(finished_job[0], "features"))
    ids, feats = good.load_all()
    with FeatureWriter(os.path.join(workdir, "features"), metadata=good.metadata) as writer:
        writer.write(ids[:-1] + 10_000_000, feats[:-1])  # Same provenance, wrong examples.
    with pytest.raises(job.ClusterJobError, match="does not match mosaic/small/pool"):
        job.run(load_config("cluster_mosaic.py", pretrain_workdir=pretrain_run), workdir)
    assert not os.path.exists(os.path.join(workdir, "assignments.npz"))


def test_features_of_another_checkpoint_are_refused(finished_job, pretrain_run, tmp_path):
    workdir = str(tmp_path / "c")
    os.makedirs(workdir)
    good = FeatureStore(os.path.join(finished_job[0], "features"))
    ids, feats = good.load_all()
    with FeatureWriter(os.path.join(workdir, "features"),
                       metadata={**good.metadata, "step": 1}) as writer:
        writer.write(ids, feats)
    with pytest.raises(job.ClusterJobError, match="another step"):
        job.run(load_config("cluster_mosaic.py", pretrain_workdir=pretrain_run), workdir)


def test_other_cluster_settings_are_refused(finished_job, pretrain_run):
    config = load_config("cluster_mosaic.py", pretrain_workdir=pretrain_run,
                         **{"cluster.epochs": 3})
    with pytest.raises(job.ClusterJobError, match="another cluster_config"):
        job.run(config, finished_job[0])


def test_missing_sdr_config_is_refused_before_writing(pretrain_run, tmp_path):
    config = load_config("cluster_mosaic.py", pretrain_workdir=pretrain_run,
                         sdr_config="configs/no_such_sdr.py")
    with pytest.raises(ConfigError, match="no_such_sdr.py' not found"):
        job.run(config, str(tmp_path / "c"))
    assert not (tmp_path / "c").exists()
