"""The whole pipeline at :tiny: stopped in every stage in turn, resumed, summarised, skipped.

One run (the module fixture `stopped_and_resumed`) is checked by the focused tests below."""
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from sdr_jax.jobs import pipeline
from sdr_jax.jobs.cluster import clustering
from sdr_jax.config_base import load_config_file
from sdr_jax.core.errors import ConfigError
from sdr_jax.jobs import evaluate as evaluate_job
from sdr_jax.train.checkpoint import Checkpointer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(data_dir, **overrides):
    config = load_config_file("configs/pipeline_mosaic.py:tiny")
    config.data_dir = data_dir
    for key, value in overrides.items():
        node = config
        *parents, leaf = key.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    return config


def _latest_step(workdir):
    checkpointer = Checkpointer(workdir)
    try:
        return checkpointer.latest_step()
    finally:
        checkpointer.close()


def _read(path):
    with open(path) as f:
        return json.load(f)


class _Killed(Exception):
    """Stands for the process being killed in the middle of a stage."""


@pytest.fixture(scope="module")
def stopped_and_resumed(small_mosaic_dir, tmp_path_factory):
    """The pipeline at :tiny, stopped in every stage in turn and resumed to the end, its workdir
    moved while SDR is unfinished. Returns what each run left behind (the tests below check it)
    and the finished run (the tests only read it, or copy it)."""
    tmp_path = tmp_path_factory.mktemp("pipeline")
    workdir = str(tmp_path / "run")
    dirs = pipeline.stage_dirs(workdir)
    # Both trainers run 6 steps; at most 4 per run: each stops once, mid-stage.
    config = tiny_config(small_mosaic_dir, **{"simsiam.train.max_steps_per_run": 4,
                                              "sdr.train.max_steps_per_run": 4})
    seen = {}

    # 1: stopped in SimSiam pre-training.
    seen["first"] = pipeline.run(config, workdir)
    seen["first_simsiam_step"] = _latest_step(dirs["simsiam"])
    seen["first_cluster_exists"] = os.path.exists(dirs["cluster"])

    # 2: SimSiam resumes and finishes; the cluster job is killed after writing its features.
    def killed_fit(*args, **kwargs):
        raise _Killed()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(clustering, "fit", killed_fit)
        try:
            pipeline.run(config, workdir)
            seen["killed"] = False
        except _Killed:
            seen["killed"] = True
    seen["simsiam_marker"] = _read(os.path.join(dirs["simsiam"], pipeline.MARKER))
    seen["features_dir"] = os.path.isdir(os.path.join(dirs["cluster"], "features"))
    seen["killed_cluster_files"] = {
        name: os.path.exists(os.path.join(dirs["cluster"], name))
        for name in ("assignments.npz", pipeline.MARKER)}

    # 3: SimSiam is skipped, clustering reuses the features, SDR stops mid-training.
    seen["third"] = pipeline.run(config, workdir)
    seen["cluster_summary"] = _read(os.path.join(dirs["cluster"], "summary.json"))
    seen["third_sdr_step"] = _latest_step(dirs["sdr"])
    seen["third_route_exists"] = os.path.exists(dirs["route"])
    # The unfinished SDR run refuses a changed trajectory field.
    try:
        pipeline.run(tiny_config(small_mosaic_dir, **{"sdr.seed": 5,
                                                      "sdr.train.max_steps_per_run": 4}),
                     workdir)
        seen["changed_seed_error"] = None
    except pipeline.PipelineError as e:
        seen["changed_seed_error"] = str(e)
    seen["after_refusal_sdr_step"] = _latest_step(dirs["sdr"])

    # The workdir is moved while SDR is unfinished: the stage's recorded wiring (absolute paths
    # into the old location, which no longer exists) is rebased, and SDR continues there.
    moved = str(tmp_path / "moved")
    shutil.move(workdir, moved)

    # 4: SDR resumes and finishes; routing and the baseline run on every task; the summary.
    seen["final"] = pipeline.run(config, moved)
    return {"config": config, "workdir": moved, "dirs": pipeline.stage_dirs(moved),
            "tmp_path": tmp_path, "seen": seen}


@pytest.mark.slow
def test_first_run_stops_in_simsiam(stopped_and_resumed):
    seen = stopped_and_resumed["seen"]
    result = seen["first"]
    assert result == {"finished": False, "stopped_in": "simsiam",
                      "seconds": {"simsiam": pytest.approx(result["seconds"]["simsiam"])}}
    assert seen["first_simsiam_step"] == 4
    assert not seen["first_cluster_exists"]


@pytest.mark.slow
def test_a_killed_cluster_job_keeps_its_features_only(stopped_and_resumed):
    seen = stopped_and_resumed["seen"]
    assert seen["killed"]
    marker = seen["simsiam_marker"]
    assert marker["result"]["step"] == 6 and marker["result"]["finished"]
    assert seen["features_dir"]
    assert seen["killed_cluster_files"] == {"assignments.npz": False, pipeline.MARKER: False}


@pytest.mark.slow
def test_cluster_reuses_the_features_and_sdr_stops(stopped_and_resumed):
    seen = stopped_and_resumed["seen"]
    assert seen["third"]["stopped_in"] == "sdr"
    assert seen["cluster_summary"]["skipped"] == {"features": True, "clustering": False}
    assert seen["third_sdr_step"] == 4
    assert not seen["third_route_exists"]


@pytest.mark.slow
def test_an_unfinished_stage_refuses_a_changed_trajectory_field(stopped_and_resumed):
    seen = stopped_and_resumed["seen"]
    # One line naming the stage and the field.
    assert re.fullmatch(r"pipeline stage sdr: .*seed: 0 in the workdir, 5 now[^\n]*",
                        seen["changed_seed_error"] or ""), seen["changed_seed_error"]
    assert seen["after_refusal_sdr_step"] == 4


@pytest.mark.slow
def test_a_moved_workdir_is_rebased_and_finishes(stopped_and_resumed):
    result, dirs = stopped_and_resumed["seen"]["final"], stopped_and_resumed["dirs"]
    moved = stopped_and_resumed["workdir"]
    assert result["finished"] and result["stopped_in"] is None
    with open(os.path.join(dirs["sdr"], "config_history.jsonl")) as f:
        history = [json.loads(line) for line in f]
    assert set(history[-1]["moved"]) == {"sdr.assignments", "sdr.init_from"}
    assert history[-1]["moved"]["sdr.assignments"]["now"].startswith(moved + os.sep)
    assert _read(os.path.join(dirs["sdr"], pipeline.MARKER))["result"]["step"] == 6


@pytest.mark.slow
def test_the_summary_agrees_with_routing_and_the_baseline(stopped_and_resumed):
    config, workdir = stopped_and_resumed["config"], stopped_and_resumed["workdir"]
    dirs = stopped_and_resumed["dirs"]
    summary = _read(os.path.join(workdir, "summary.json"))
    assert list(summary["tasks"]) == list(config.tasks)
    assert set(summary["seconds"]) == set(pipeline.STAGES)
    for task, row in summary["tasks"].items():
        ranking = _read(os.path.join(dirs["route"], task, "ranking.json"))
        baseline = _read(os.path.join(dirs["baseline"], f"{task}.json"))
        validation = {p["index"]: p["validation"] for p in ranking["paths"]}
        # Routed = the argmax of the validation scores; oracle = the best on the test queries.
        assert row["path_index"] == max(validation, key=lambda i: (validation[i], -i))
        assert row["knn"]["routed"] == ranking["routed"]["knn"]["test"]
        assert row["knn"]["oracle"]["accuracy"] == max(p["test"]["accuracy"]
                                                       for p in ranking["paths"])
        assert row["knn"]["sdrnet"] == ranking["sdrnet"]["knn"]["test"]
        assert row["knn"]["simsiam"] == baseline["knn"]["test"]
        assert row["linear"]["simsiam"] == baseline["linear"]["test"]
        assert set(row["knn"]) == {"pixels", "random_init", "simsiam", "sdrnet", "routed",
                                   "oracle"}
        assert all(c["low"] <= c["accuracy"] <= c["high"] for c in row["knn"].values())
        assert row["path"] == ranking["routed"]["path"] and len(row["path"]) == 4
        assert 1 <= row["paths_within_noise"] == ranking["paths_within_noise"] <= 16
        # The pipeline's run knows its assignments file: the routed leaf's domains.
        assert row["composition"]["available"] and row["composition"]["num_images"] > 0
        assert os.path.isfile(summary["pictures"][f"route/{task}"])
        assert os.path.isdir(os.path.join(dirs["route"], task, "best_subnet"))
    assert set(summary["mean"]["knn"]) == set(summary["tasks"][task]["knn"])
    assert summary["protocol"]["split_seed"] == config.route.split_seed
    assert os.path.isfile(summary["pictures"]["clusters"])
    text = open(os.path.join(workdir, "summary.txt")).read()
    assert text == pipeline.format_summary(summary) + "\n"
    assert all(task in text for task in config.tasks) and "wall time per stage" in text
    assert "oracle" in text and "within noise" in text and "within its noise" in text


@pytest.mark.slow
def test_evaluate_reproduces_the_routing_sdrnet_column(stopped_and_resumed):
    # One protocol: evaluate() of the SDRnet reproduces routing's SDRnet column.
    config, workdir = stopped_and_resumed["config"], stopped_and_resumed["workdir"]
    summary = _read(os.path.join(workdir, "summary.json"))
    task = config.tasks[0]
    sdrnet = evaluate_job.evaluate(config.route, stopped_and_resumed["dirs"]["sdr"], task,
                                   baselines=False)
    assert sdrnet["knn"]["test"] == summary["tasks"][task]["knn"]["sdrnet"]


@pytest.mark.slow
def test_a_finished_run_reruns_nothing_and_refuses_other_configs(stopped_and_resumed,
                                                                  small_mosaic_dir):
    config, workdir = stopped_and_resumed["config"], stopped_and_resumed["workdir"]
    dirs = stopped_and_resumed["dirs"]
    summary = _read(os.path.join(workdir, "summary.json"))
    # Everything is done: nothing reruns, the same table comes out.
    ranking_file = os.path.join(dirs["route"], config.tasks[0], "ranking.json")
    before = os.stat(ranking_file).st_mtime_ns
    again = pipeline.run(config, workdir)
    assert again["tasks"] == summary["tasks"]
    assert os.stat(ranking_file).st_mtime_ns == before
    assert again["seconds"]["sdr"] < summary["seconds"]["sdr"] + 5  # skipped: a marker read

    # Another config for a finished stage is refused, not silently mixed in.
    with pytest.raises(pipeline.PipelineError, match="another config"):
        pipeline.run(tiny_config(small_mosaic_dir, **{"simsiam.train.num_steps": 7}), workdir)
    with pytest.raises(pipeline.PipelineError, match="another evaluation protocol"):
        pipeline.run(tiny_config(small_mosaic_dir, **{"route.knn_k": 5}), workdir)
    # Another routing-validation split is another protocol too.
    with pytest.raises(pipeline.PipelineError, match=r"another evaluation protocol.*split_seed"):
        pipeline.run(tiny_config(small_mosaic_dir, **{"route.split_seed": 1}), workdir)


@pytest.mark.slow
def test_the_launch_script_on_a_finished_run_prints_the_summary(stopped_and_resumed,
                                                                small_mosaic_dir):
    workdir = stopped_and_resumed["workdir"]
    summary = _read(os.path.join(workdir, "summary.json"))
    done = subprocess.run(
        [sys.executable, "launch/pipeline.py", "--config=configs/pipeline_mosaic.py:tiny",
         f"--workdir={workdir}", f"--config.data_dir={small_mosaic_dir}"],
        cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ROOT})
    assert done.returncode == 0, done.stderr[-2000:]
    assert pipeline.format_summary(summary).splitlines()[2] in done.stdout


@pytest.mark.slow
def test_a_copied_workdir_is_the_same_run(stopped_and_resumed, tmp_path):
    # A copied pipeline workdir is the same run (its markers store workdir-relative paths): every
    # stage is skipped there, nothing is trained, routed or evaluated again.
    config, workdir = stopped_and_resumed["config"], stopped_and_resumed["workdir"]
    summary = _read(os.path.join(workdir, "summary.json"))
    copied = str(tmp_path / "copied")
    shutil.copytree(workdir, copied)
    copied_dirs = pipeline.stage_dirs(copied)
    outputs = [os.path.join(copied_dirs[s], pipeline.MARKER) for s in ("simsiam", "cluster", "sdr")]
    outputs += [os.path.join(copied_dirs["route"], t, "ranking.json") for t in config.tasks]
    outputs += [os.path.join(copied_dirs["baseline"], f"{t}.json") for t in config.tasks]
    before = {path: os.stat(path).st_mtime_ns for path in outputs}
    moved = pipeline.run(config, copied)
    assert moved["finished"] and moved["tasks"] == summary["tasks"]
    assert {path: os.stat(path).st_mtime_ns for path in outputs} == before
    marker = _read(os.path.join(copied_dirs["sdr"], pipeline.MARKER))
    assert marker["config"]["sdr"]["assignments"] == "$WORKDIR/cluster/assignments.npz"


@pytest.mark.parametrize("key, value, message", [
    ("sdr.model.width", 0.5, "same model size"),
    ("sdr.data.image_size", 16, "same data"),
    ("cluster.sdr_config", "configs/sdr256.py:tiny", "G=4, L=4"),
    ("cluster.pretrain_workdir", "/elsewhere", "the pipeline sets pretrain_workdir"),
    ("tasks", (), "tasks is empty"),
])
def test_inconsistent_configs_are_refused_before_anything_runs(tmp_path, key, value, message):
    workdir = tmp_path / "run"
    with pytest.raises(ConfigError, match=message):
        pipeline.run(tiny_config("", **{key: value}), str(workdir))
    assert not workdir.exists()


@pytest.mark.slow
def test_cli_bad_config_is_one_line_and_writes_nothing(tmp_path):
    workdir = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "launch/pipeline.py", "--config=configs/pipeline_mosaic.py:tiny",
         f"--workdir={workdir}", "--config.sdr.model.width=0.5"],
        cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ROOT})
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "error: SimSiam and SDR must use the same model size: model.width is 0.125 for simsiam, "
        "0.5 for sdr."]
    assert not workdir.exists()
