"""Progressive SDR training: schedule, subset batches, 8 devices vs 1, compiles, resume, errors."""
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import sdr_mosaic
from sdr_jax import methods, models
from sdr_jax.data.assignments import Assignments
from sdr_jax.data import datasets, sdr_batches
from sdr_jax.core.errors import ConfigError
from sdr_jax.core.paths import PathSpec
from sdr_jax.core.progressive import ProgressiveSchedule
from sdr_jax.core import mesh as mesh_lib
from sdr_jax.train import optim, reporting, sdr
from sdr_jax.train.state import create_train_state
from tests import fixtures

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPEC = PathSpec(num_blocks=4, num_groups=2)


def make_assignments(ids, spec=SPEC, seed=0):
    """Balanced random leaves: the training code must only depend on the file, not on how the
    clustering job found it (that job has its own tests)."""
    leaves = np.random.default_rng(seed).permutation(np.arange(len(ids)) % spec.num_paths)
    return Assignments(ids=ids, leaves=leaves, num_groups=spec.num_groups,
                       num_blocks=spec.num_blocks,
                       centroids=tuple(np.zeros((spec.num_groups ** l, spec.num_groups, 4),
                                                np.float32) for l in range(spec.num_blocks)))


@pytest.fixture(scope="module")
def pool(small_mosaic_dir):
    source = datasets.open_source("mosaic/small", "pool", small_mosaic_dir)
    return source, sdr_batches.record_ids(source)


@pytest.fixture(scope="module")
def assignments_file(pool, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("cluster") / "assignments.npz")
    make_assignments(pool[1]).save(path)
    return path


def tiny_config(data_dir, assignments, **overrides):
    config = sdr_mosaic.get_config("tiny").unlock()
    config.data.data_dir = data_dir
    config.sdr.assignments = assignments
    for key, value in overrides.items():
        section, field = key.split("__")
        config[section][field] = value
    return config.lock()


def test_schedule_grows_the_path_space_from_the_last_block():
    schedule = ProgressiveSchedule.make(SPEC, num_steps=50)
    assert [schedule.stage_at(s) for s in (1, 10, 11, 20, 21, 50)] == [0, 0, 1, 1, 2, 4]
    for step in range(1, 51):
        stage = schedule.stage_at(step)
        paths = schedule.sample_paths(0, step, 3)
        # The first L-stage blocks take all groups; the last `stage` blocks vary.
        assert np.all(paths[:, :SPEC.num_blocks - stage] == -1)
        assert np.all(paths[:, SPEC.num_blocks - stage:] >= 0)
        if stage > 0 and 3 <= schedule.space_size(stage):
            assert len({tuple(p) for p in paths}) == 3  # distinct while the space allows
    assert [schedule.space_size(s) for s in range(5)] == [1, 2, 4, 8, 16]
    flat = ProgressiveSchedule.make(SPEC, num_steps=50, progressive=False)
    assert flat.stage_at(1) == 4


def test_schedule_rejects_a_stage_list_that_does_not_fit_the_blocks():
    with pytest.raises(ConfigError, match="6 entries, but 4 SDR blocks make 5 stages"):
        ProgressiveSchedule.make(SPEC, 50, stage_fractions=(0.2,) * 5 + (0.0,))


def test_subnet_batches_hold_only_their_subset(pool):
    source, ids = pool
    assignments = make_assignments(ids)
    schedule = ProgressiveSchedule.make(SPEC, num_steps=10)
    batches = sdr_batches.SDRBatches(
        source, assignments, schedule, source_ids=ids, d0_batch_size=8, paths_per_step=4,
        subnet_batch_size=6, seed=3, aug_cfg=sdr_mosaic.get_config("tiny").data.aug)
    position_of = {int(i): p for p, i in enumerate(ids)}
    for step in (1, 5, 9):
        plan = batches.plan(step)
        assert plan["d0_records"].shape == (8,)
        if schedule.stage_at(step) == 0:
            assert "paths" not in plan
            continue
        for path, records in zip(plan["paths"], plan["sub_records"]):
            allowed = {position_of[int(i)] for i in assignments.ids_for(path)}
            assert set(records.tolist()) <= allowed
        batch = batches[step]
        assert batch["sub_view1"].shape == (4, 6, 32, 32, 3)
        np.testing.assert_array_equal(batch["paths"], plan["paths"])
    # A pure function of (seed, step): the same step gives the same batch.
    np.testing.assert_array_equal(batches[9]["sub_view2"], batches[9]["sub_view2"])
    # D0 positions walk through epoch permutations: one epoch covers the pool once.
    size = len(source)
    seen = np.concatenate([batches.plan(s)["d0_records"] for s in range(1, size // 8 + 1)])
    assert len(np.unique(seen)) == len(seen)


def test_assignments_of_another_dataset_are_refused(pool):
    source, ids = pool
    other = make_assignments(ids[: len(ids) // 2])
    with pytest.raises(ConfigError, match="another dataset or split"):
        sdr_batches.SDRBatches(source, other, ProgressiveSchedule.make(SPEC, 10), source_ids=ids,
                               d0_batch_size=8, paths_per_step=2, subnet_batch_size=4, seed=0,
                               aug_cfg=sdr_mosaic.get_config("tiny").data.aug)


def run_step(devices, config, state, batch):
    mesh = mesh_lib.make_data_mesh(devices)
    sdrnet = models.build_model(config.model, bn_axis_name=mesh_lib.DATA_AXIS)
    subnet = models.build_model(config.model, bn_axis_name=mesh_lib.DATA_AXIS, sync_bn=False)
    tx, _ = optim.make_optimizer(config.optim, 10)
    full = jnp.asarray(models.path_spec(config.model).full_path())
    step = sdr.make_sdr_step(methods.build(config.method, 10), sdrnet, subnet, tx, mesh, full,
                             kd="siamkd", kd_weight=0.5, with_subnets=True,
                             aug_cfg=None)  # the views as given: test_device_augment.py
    new_state, metrics = step(jax.device_put(state, mesh_lib.replicated(mesh)),
                              mesh_lib.shard_batch(batch, mesh))
    return jax.device_get(new_state), {k: float(v) for k, v in metrics.compute().items()}, step


@pytest.mark.slow
def test_eight_devices_with_different_paths_equal_one_device(small_mosaic_dir, assignments_file):
    config = tiny_config(small_mosaic_dir, assignments_file)
    model = models.build_model(config.model)
    tx, _ = optim.make_optimizer(config.optim, 10)
    full = jnp.asarray(models.path_spec(config.model).full_path())
    state = jax.device_get(jax.jit(lambda r: create_train_state(model, tx, r, 32, full))(
        jax.random.PRNGKey(1)))
    rng = np.random.default_rng(0)
    images = lambda *shape: rng.integers(0, 256, shape + (32, 32, 3), dtype=np.uint8)  # noqa
    paths = SPEC.stage_paths(4)[rng.permutation(16)[:8]].astype(np.int32)
    batch = {"d0_view1": images(16), "d0_view2": images(16), "paths": paths,
             "sub_view1": images(8, 4), "sub_view2": images(8, 4)}
    one_state, one, one_step = run_step(jax.devices()[:1], config, state, batch)
    eight_state, eight, _ = run_step(jax.devices(), config, state, batch)
    assert set(eight) == set(one) == set(sdr.SDRMetrics.__annotations__)
    for key in one:  # every logged metric, not only the losses
        np.testing.assert_allclose(eight[key], one[key], atol=1e-5, rtol=1e-5, err_msg=key)
    assert one["loss_kd"] != 0 and one["loss_subnet"] != 0  # the sub-net terms are in play
    for a, b in zip(jax.tree.leaves(eight_state.params), jax.tree.leaves(one_state.params)):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4)
    # The running BN statistics are a function of the global batch, not of the device layout.
    for (key, a), b in zip(jax.tree_util.tree_leaves_with_path(eight_state.batch_stats),
                           jax.tree.leaves(one_state.batch_stats)):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4, err_msg=jax.tree_util.keystr(key))
    assert one_step._cache_size() == 1


def losses(workdir):
    return {row["step"]: row for row in reporting.read_metrics(workdir)}


@pytest.mark.slow
def test_run_goes_through_every_stage_and_resumes_mid_stage(small_mosaic_dir, assignments_file,
                                                            tmp_path):
    # Masked sub-nets: two step functions for the five stages, so the three runs compile little
    # (compile counts: test_compiles_at_most_once_per_step_function, tests/test_compact.py).
    straight = str(tmp_path / "straight")
    fields = dict(train__num_steps=10, train__log_every=1, eval__knn_tasks=(),
                  sdr__subnet_exec="masked")
    config = tiny_config(small_mosaic_dir, assignments_file, **fields)
    trainer = sdr.SDRTrainer(config, straight)
    assert trainer.schedule.stage_at(7) == trainer.schedule.stage_at(8) == 3
    result = sdr.train_and_evaluate(config, straight)
    assert result["finished"]
    rows = losses(straight)
    assert [rows[s]["stage"] for s in (1, 3, 5, 7, 9)] == [0, 1, 2, 3, 4]
    assert rows[1]["path_space"] == 1 and rows[10]["path_space"] == 16

    resumed = str(tmp_path / "resumed")
    stopped = tiny_config(small_mosaic_dir, assignments_file, **fields, train__max_steps_per_run=7)
    assert not sdr.train_and_evaluate(stopped, resumed)["finished"]  # stops inside stage 3
    sdr.train_and_evaluate(config, resumed)
    got, want = losses(resumed), losses(straight)
    for step in (8, 9, 10):
        for key in ("loss", "loss_sdrnet", "loss_subnet", "loss_kd"):
            np.testing.assert_allclose(got[step][key], want[step][key], atol=1e-6)


@pytest.mark.slow
def test_compiles_at_most_once_per_step_function(small_mosaic_dir, assignments_file, tmp_path):
    # Masked sub-nets: one step function for all stages >= 1 (compact: tests/test_compact.py).
    config = tiny_config(small_mosaic_dir, assignments_file, train__num_steps=10,
                         eval__knn_tasks=(), sdr__subnet_exec="masked")
    trainer = sdr.SDRTrainer(config, str(tmp_path))
    state = trainer.init_state()
    data = trainer.make_data(0, None)
    step_fn = trainer.make_step_fn()
    for _ in range(1, 11):  # all five stages, 1..16 paths in the space
        state, _ = step_fn(state, next(data))
    steps = trainer.step_functions
    assert sorted(steps) == [0, 1, 2, 3, 4]
    assert len({id(f) for f in steps.values()}) == 2  # stage 0, and one for stages 1-4
    assert {k: f._cache_size() for k, f in steps.items()} == {k: 1 for k in range(5)}


@pytest.mark.slow
def test_init_from_a_simsiam_run_copies_its_weights(small_mosaic_dir, assignments_file,
                                                     tiny_simsiam_run, tmp_path):
    from sdr_jax.train import checkpoint, pretrain as simsiam
    from tests import fixtures
    simsiam_dir = tiny_simsiam_run  # read only
    _, trained, _ = checkpoint.load_run(simsiam_dir)

    config = tiny_config(small_mosaic_dir, assignments_file, eval__knn_tasks=(),
                         sdr__init_from=simsiam_dir)
    state = sdr.SDRTrainer(config, str(tmp_path / "sdr")).init_state()
    fresh = sdr.SDRTrainer(tiny_config(small_mosaic_dir, assignments_file),
                           str(tmp_path / "fresh")).init_state()
    for collection in ("params", "batch_stats"):
        got = getattr(state, collection)
        for key in trained[collection]:  # every SimSiam variable lands in the SDRnet
            jax.tree.map(np.testing.assert_array_equal, got[key], trained[collection][key])
    # The SiamKD head is not in SimSiam: it keeps the fresh (seeded) init.
    jax.tree.map(np.testing.assert_array_equal, state.params["kd_predictor"],
                 fresh.params["kd_predictor"])

    wider = fixtures.tiny_simsiam_config(small_mosaic_dir).unlock()
    wider.train.num_steps = 2
    wider.model.proj_dim = 64
    wider_dir = str(tmp_path / "wider")
    simsiam.train_and_evaluate(wider.lock(), wider_dir)
    config = tiny_config(small_mosaic_dir, assignments_file, sdr__init_from=wider_dir)
    with pytest.raises(ConfigError, match="same model size"):
        sdr.SDRTrainer(config, str(tmp_path / "sdr2")).init_state()


def run_cli(*args):
    env = dict(os.environ, PYTHONPATH=REPO)
    return subprocess.run([sys.executable, os.path.join(REPO, "launch/train.py"), *args],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=300)


@pytest.mark.slow
def test_cli_refuses_assignments_of_another_tree(small_mosaic_dir, pool, tmp_path):
    wrong = str(tmp_path / "g4.npz")
    make_assignments(pool[1], spec=PathSpec(num_blocks=4, num_groups=4)).save(wrong)
    out = run_cli("--config=configs/sdr_mosaic.py:tiny", f"--workdir={tmp_path / 'run'}",
                  f"--config.data.data_dir={small_mosaic_dir}", f"--config.sdr.assignments={wrong}")
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1].startswith("error:")
    assert "num_groups (G)=4" in out.stderr and "expects 2" in out.stderr
    assert not os.path.exists(tmp_path / "run" / "checkpoints")


@pytest.mark.slow
def test_cli_without_assignments_says_what_to_run(small_mosaic_dir, tmp_path):
    out = run_cli("--config=configs/sdr_mosaic.py:tiny", f"--workdir={tmp_path / 'run'}",
                  f"--config.data.data_dir={small_mosaic_dir}")
    assert out.returncode == 1
    assert "launch/cluster.py" in out.stderr.strip().splitlines()[-1]


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_with_jax_distributed_equal_one_process_with_two_devices(
        small_mosaic_dir, assignments_file, tmp_path):
    args = ["--config=configs/sdr_mosaic.py:tiny", f"--config.data.data_dir={small_mosaic_dir}",
            f"--config.sdr.assignments={assignments_file}", "--config.train.num_steps=3",
            "--config.train.log_every=1", "--config.eval.knn_tasks=()",
            "--config.sdr.progressive=False"]  # every step trains sub-nets: one compile

    def start(workdir, devices, *extra):
        env = dict(os.environ, PYTHONPATH=REPO,
                   XLA_FLAGS=fixtures.xla_flags(devices))
        return subprocess.Popen([sys.executable, os.path.join(REPO, "launch/train.py"), *args,
                                 f"--workdir={workdir}", *extra], env=env, cwd=REPO,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    port = free_port()
    multi = str(tmp_path / "two_processes")
    workers = [start(multi, 1, f"--coordinator_address=localhost:{port}", "--num_processes=2",
                     f"--process_id={i}") for i in range(2)]
    single = str(tmp_path / "one_process")
    reference = start(single, 2)
    for proc in [*workers, reference]:
        _, err = proc.communicate(timeout=400)
        assert proc.returncode == 0, err[-2000:]
    got, want = losses(multi), losses(single)
    assert sorted(got) == sorted(want) == [1, 2, 3]
    for step in want:
        for key in ("loss", "loss_sdrnet", "loss_subnet", "loss_kd"):
            np.testing.assert_allclose(got[step][key], want[step][key], atol=1e-5,
                                       err_msg=f"{key} at step {step}")
