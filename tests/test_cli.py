"""run_or_fail: the project's own errors become one line and exit 1; a bug keeps its traceback.

And every check of the user's input raises a project error (an SDRError), so it reaches the
user as one line; a plain ValueError from the same code would be a programming error.
"""
import numpy as np
import pytest

from sdr_jax import config_base
from sdr_jax.core.errors import CheckpointError, ConfigError, SDRError, StoppedBySignal
from sdr_jax.jobs import cli


def _raise(error):
    raise error


@pytest.mark.parametrize("error", [ConfigError("bad value\nmore detail"),
                                   CheckpointError("bad value"), SDRError("bad value")])
def test_project_errors_are_one_line_and_exit_1(error, capsys):
    with pytest.raises(SystemExit) as exited:
        cli.run_or_fail(_raise, error)
    assert exited.value.code == 1
    assert capsys.readouterr().err == "error: bad value\n"


@pytest.mark.parametrize("error", [ValueError("a bug"), KeyError("a bug"), TypeError("a bug")])
def test_programming_errors_keep_their_traceback(error):
    with pytest.raises(type(error)):
        cli.run_or_fail(_raise, error)


def test_a_stopped_run_exits_with_the_signal_status(capsys):
    with pytest.raises(SystemExit) as exited:
        cli.run_or_fail(_raise, StoppedBySignal("stopped at step 3", 15))
    assert exited.value.code == 143
    assert capsys.readouterr().err == "stopped at step 3\n"


def test_the_result_comes_back():
    assert cli.run_or_fail(lambda a, b=0: a + b, 1, b=2) == 3


def _bad_inputs():
    """(name, call) for user-input checks: each must raise an SDRError."""
    import jax
    from sdr_jax import models
    from sdr_jax.core import mesh
    from sdr_jax.data import assignments, augment, datasets, input_pipeline, tasks
    from sdr_jax.jobs.cluster import clustering, store

    def model(**overrides):
        return lambda: models.build_model(models.model_config("tiny", **overrides))

    def aug(**fields):
        cfg = config_base.default_aug_config(32).to_dict()
        cfg.update(fields)
        from ml_collections import ConfigDict
        return lambda: augment.validate_aug_config(ConfigDict(cfg))

    fake_source = [{"image": np.zeros((8, 8, 3), np.uint8), "id": i, "label": 0}
                   for i in range(4)]
    return [
        ("model.stem", model(stem="tall")),
        ("model.dtype", model(dtype="float8")),
        ("model.width", model(width=0.01)),
        ("model.sdr groups do not divide", model(sdr=dict(num_groups=3, shared_fraction=0.5))),
        ("model.sdr.num_paths", model(sdr=dict(num_groups=2, num_paths=99))),
        ("model arch", lambda: models.model_config("resnet7")),
        ("batch over devices", lambda: mesh.local_batch_size(
            7, jax.make_mesh((8,), ("data",)))),
        ("aug.hue", aug(hue=0.9)),
        ("aug.crop_scale", aug(crop_scale=(0.5, 0.2))),
        ("batch larger than the data", lambda: input_pipeline.pretrain_dataset(
            fake_source, batch_size=8, seed=0, aug_cfg=config_base.default_aug_config(8))),
        ("empty source", lambda: input_pipeline.pretrain_dataset(
            [], batch_size=8, seed=0, aug_cfg=config_base.default_aug_config(8))),
        ("cluster batch", lambda: clustering.fit(np.zeros((16, 4), np.float32), None, 2, 2,
                                                 config_base.ClusterConfig(batch_size=64))),
        ("cluster config", lambda: config_base.ClusterConfig(tau=0.0)),
        ("config file", lambda: config_base.load_config_file("configs/missing.py")),
        ("config variant", lambda: config_base.load_config_file("configs/route.py:big")),
        ("assignments file", lambda: assignments.load("/nonexistent/assignments.npz")),
        ("feature store", lambda: store.FeatureStore("/nonexistent/features")),
        ("dataset name", lambda: datasets.open_source("no_such_dataset_xyz", "train")),
        ("task name", lambda: tasks.get_task("no_such_task_xyz")),
    ]


def test_every_bad_user_input_raises_a_project_error():
    for name, call in _bad_inputs():
        try:
            call()
        except SDRError as e:
            assert str(e), name
        else:
            pytest.fail(f"{name}: no error raised")
