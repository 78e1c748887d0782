"""Workdirs a run can trust: damaged checkpoints are skipped (with one warning line) by every
reader; a bad config is refused before anything is written."""
import glob
import json
import os
import re
import shutil
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import sdr_mosaic
from sdr_jax.core.errors import CheckpointError, SDRError
from sdr_jax.train import checkpoint, pretrain as simsiam
from tests.fixtures import tiny_simsiam_config


tiny_config = tiny_simsiam_config  # checkpoints at steps 3 and 6


@pytest.fixture(scope="module")
def finished_run(tiny_simsiam_run):
    return tiny_simsiam_run  # read only: the tests damage copies


def truncate_data(step_dir):
    largest = max(glob.glob(f"{step_dir}/state/**/d/*", recursive=True), key=os.path.getsize)
    os.truncate(largest, os.path.getsize(largest) // 2)


def delete_metadata(step_dir):
    os.remove(f"{step_dir}/state/_METADATA")


def leaves(variables):
    return jax.tree.leaves(variables)


@pytest.mark.slow
@pytest.mark.parametrize("damage", [truncate_data, delete_metadata])
def test_readers_fall_back_to_the_previous_intact_checkpoint(finished_run, tmp_path, capsys,
                                                             damage):
    workdir = str(tmp_path / "copy")
    shutil.copytree(finished_run, workdir)
    damage(f"{workdir}/checkpoints/6")
    _, variables, step = checkpoint.load_run(workdir)
    assert step == 3
    _, want, _ = checkpoint.load_run(finished_run, 3)
    for a, b in zip(leaves(variables), leaves(want), strict=True):
        np.testing.assert_array_equal(a, b)
    warning = capsys.readouterr().err.strip().splitlines()
    assert len(warning) == 1 and warning[0].startswith("warning: damaged checkpoint"), warning
    assert "step 6:" in warning[0] and "using step 3" in warning[0]


@pytest.mark.slow
def test_training_resumes_from_the_intact_one_and_redoes_the_damaged_steps(
        finished_run, small_mosaic_dir, tmp_path, capsys):
    workdir = str(tmp_path / "copy")
    shutil.copytree(finished_run, workdir)
    truncate_data(f"{workdir}/checkpoints/6")
    result = simsiam.train_and_evaluate(tiny_config(small_mosaic_dir), workdir)
    assert result["finished"] and result["step"] == 6
    assert "using step 3" in capsys.readouterr().err
    assert os.listdir(f"{workdir}/{checkpoint.DAMAGED_DIR}") == ["6"]  # kept for a look
    for a, b in zip(leaves(checkpoint.load_run(workdir)[1]),
                    leaves(checkpoint.load_run(finished_run)[1]), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_no_intact_checkpoint_is_one_error(finished_run, tmp_path):
    workdir = str(tmp_path / "copy")
    shutil.copytree(finished_run, workdir)
    truncate_data(f"{workdir}/checkpoints/6")
    delete_metadata(f"{workdir}/checkpoints/3")
    with pytest.raises(CheckpointError, match=r"no intact checkpoint .*step 6: .*step 3: .*_METADATA"):
        checkpoint.load_run(workdir)


@pytest.mark.parametrize("section, field, value, message", [
    ("model", "arch", "resnet7", "Unknown arch 'resnet7'"),
    ("model", "width", 0.0, "64*width must be a positive integer"),
    ("train", "checkpoint_every", 0, "train.checkpoint_every=0"),
    ("train", "log_every", 0, "train.log_every=0"),
    ("train", "num_steps", -5, "train.num_steps=-5"),
    ("eval", "knn_tasks", ("mnistt",), "unknown task 'mnistt'"),
])
def test_a_bad_config_is_refused_before_the_workdir_is_touched(
        small_mosaic_dir, tmp_path, section, field, value, message):
    config = tiny_config(small_mosaic_dir).unlock()
    config[section][field] = value
    workdir = str(tmp_path / "run")
    with pytest.raises((SDRError, ValueError), match=re.escape(message)):
        simsiam.train_and_evaluate(config.lock(), workdir)
    assert not os.path.exists(workdir)
    checkpoint.check_workdir_config(workdir, tiny_config(small_mosaic_dir))  # the fixed command


def changed(config, fields):
    config = config.copy_and_resolve_references().unlock()
    for key, value in fields.items():
        *sections, field = key.split(".")
        owner = config
        for section in sections:
            owner = owner[section]
        owner[field] = value
    return config.lock()


def test_resume_refuses_trajectory_changes_unless_allowed_and_records_them(tmp_path):
    config = sdr_mosaic.get_config("tiny")
    lr = config.optim.base_lr
    workdir = str(tmp_path)
    checkpoint.check_workdir_config(workdir, changed(config, {"optim.base_lr": 1e8}))
    # Stopped before its first checkpoint (e.g. non-finite): a rerun with a lower lr continues
    # nothing, so it is simply recorded.
    checkpoint.check_workdir_config(workdir, config)
    os.makedirs(tmp_path / checkpoint.CHECKPOINT_DIR / "3")
    checkpoint.check_workdir_config(workdir, config)  # the same command resumes

    for fields, named in [
            ({"optim.base_lr": 1.0}, f"optim.base_lr: {lr} in the workdir, 1.0 now"),
            ({"optim.batch_size": 32, "train.num_steps": 9},
             "optim.batch_size: 16 in the workdir, 32 now; train.num_steps: 6 in the workdir"),
            ({"seed": 3}, "seed: 0 in the workdir, 3 now"),
            ({"sdr.assignments": "other.npz"}, "sdr.assignments: '' in the workdir"),
    ]:
        with pytest.raises(CheckpointError, match=re.escape(named)):
            checkpoint.check_workdir_config(workdir, changed(config, fields))

    # Reporting cadences may change; an explicit override lets the lr change too; both recorded.
    checkpoint.check_workdir_config(workdir, changed(config, {"train.log_every": 1}))
    checkpoint.check_workdir_config(workdir, changed(config, {
        "train.log_every": 1, "optim.base_lr": 0.01, "train.allow_config_change": True}))
    recorded = json.loads((tmp_path / checkpoint.CONFIG_FILE).read_text())
    assert recorded["optim"]["base_lr"] == 0.01 and recorded["train"]["log_every"] == 1
    history = [json.loads(line) for line in open(tmp_path / checkpoint.HISTORY_FILE)]
    assert [h["override"] for h in history] == [False, False, True]
    assert history[0]["changed"] == {"optim.base_lr": {"was": 1e8, "now": lr}}
    assert history[1]["changed"] == {"train.log_every": {"was": 2, "now": 1}}
    assert history[2]["changed"]["optim.base_lr"] == {"was": lr, "now": 0.01}

    # Another model never fits the checkpoints, override or not.
    with pytest.raises(CheckpointError, match="another 'model' config"):
        checkpoint.check_workdir_config(workdir, changed(
            config, {"model.proj_dim": 48, "train.allow_config_change": True}))


def test_one_writer_per_workdir_and_a_dead_writers_lock_is_taken_over(small_mosaic_dir, tmp_path,
                                                                      capsys):
    workdir = str(tmp_path)
    lock = tmp_path / checkpoint.LOCK_FILE
    with checkpoint.workdir_lock(workdir):
        with pytest.raises(CheckpointError, match=f"in use by process {os.getpid()}"):
            simsiam.train_and_evaluate(tiny_config(small_mosaic_dir), workdir)
        assert os.listdir(workdir) == [checkpoint.LOCK_FILE]  # the second run wrote nothing
    assert not lock.exists()

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock.write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}))  # a SIGKILLed run
    with checkpoint.workdir_lock(workdir):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert "taking over the lock of a dead run" in capsys.readouterr().err
    assert os.listdir(workdir) == []
