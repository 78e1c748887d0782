"""The whole SDR pipeline in one call: SimSiam -> clustering -> progressive SDR -> routing.

  python launch/pipeline.py --config=configs/pipeline_mosaic.py --workdir=DIR

Stages, each the existing library function, each in its own place under DIR:
  simsiam   `train.simsiam.train_and_evaluate`  DIR/simsiam (the pre-training run, D0)
  cluster   `cluster.job.run`                   DIR/cluster (features, assignments.npz, clusters)
  sdr       `train.sdr.train_and_evaluate`      DIR/sdr (with DIR/cluster/assignments.npz)
  route     `route.route`, every task           DIR/sdr/route/<task>/ (ranking, histogram, sub-net)
  baseline  `eval.downstream.evaluate`          DIR/baseline/<task>.json (the SimSiam run, per task)
then DIR/summary.txt and DIR/summary.json.

Resume: a stage whose output is complete is skipped: the trainers and the cluster job leave a
marker (`pipeline_stage.json`, with the stage's config) when they finish; a task's routing is
complete when its `ranking.json` exists (route writes its directory atomically), its baseline
when `DIR/baseline/<task>.json` does. An unfinished stage is simply run again: the trainers
resume from their latest checkpoint and the cluster job skips the parts it already wrote. A
trainer stopped early (`train.max_steps_per_run`, preemption) stops the pipeline; the next run
continues from there. Output made with another config is an error, never silently reused.

One kNN protocol for all three accuracy columns, the routing config's (`config.route`): the
memory is the first `max_train` images of the task's train split, the queries its first
`max_test` test images, k = `knn_k`, temperature `knn_temperature`, and BN per `bn` (default
'recalibrate': the statistics of every network are re-estimated on the same `bn_recal_images`
train images). The SimSiam column is `evaluate` of the SimSiam run, the SDRnet and routed
columns come from `route` (the SDRnet = all groups; routed = the best of the G**L paths, chosen
by that same kNN accuracy on those same queries, as SDR's routing does, so it is the maximum
over the paths, an optimistic estimate of a sub-net picked without the test labels).
"""
from __future__ import annotations

import copy
import json
import os
import time
from typing import Any, Callable, Optional

import jax
from ml_collections import ConfigDict

from sdr_jax import models, route as route_lib
from sdr_jax.cluster import job as cluster_job
from sdr_jax.config_base import load_config_file
from sdr_jax.errors import ConfigError, SDRError
from sdr_jax.eval import downstream
from sdr_jax.train import simsiam as simsiam_trainer
from sdr_jax.train import sdr as sdr_trainer

STAGES = ("simsiam", "cluster", "sdr", "route", "baseline")
MARKER = "pipeline_stage.json"
TIMINGS = "timings.json"
SUMMARY_TXT, SUMMARY_JSON = "summary.txt", "summary.json"
# Fields that may change between the runs of one stage without changing what it makes.
_RESUME_FIELDS = (("train", "max_steps_per_run"),)
# The model fields SimSiam and the SDRnet must share (the baseline must be the same size).
_MODEL_SIZE_FIELDS = ("arch", "width", "stem", "proj_dim", "pred_dim", "dtype")


class PipelineError(SDRError):
    """The pipeline's config, or an output already in its workdir, does not fit."""


def stage_dirs(workdir: str) -> dict[str, str]:
    return {"simsiam": os.path.join(workdir, "simsiam"),
            "cluster": os.path.join(workdir, "cluster"),
            "sdr": os.path.join(workdir, "sdr"),
            "route": os.path.join(workdir, "sdr", "route"),
            "baseline": os.path.join(workdir, "baseline")}


def stage_configs(config: ConfigDict, workdir: str) -> dict[str, ConfigDict]:
    """Every stage's config with the pipeline's wiring filled in (who reads whose output)."""
    dirs = stage_dirs(workdir)
    simsiam, cluster, sdr = (copy.deepcopy(config[k]) for k in ("simsiam", "cluster", "sdr"))
    if config.data_dir:
        simsiam.data.data_dir = sdr.data.data_dir = config.data_dir
    _wire(cluster, "pretrain_workdir", os.path.abspath(dirs["simsiam"]))
    _wire(sdr.sdr, "assignments",
          os.path.abspath(os.path.join(dirs["cluster"], cluster_job.ASSIGNMENTS_FILE)))
    return {"simsiam": simsiam, "cluster": cluster, "sdr": sdr, "route": config.route}


def _wire(config: ConfigDict, field: str, value: str) -> None:
    if config[field] and os.path.abspath(config[field]) != value:
        raise ConfigError(f"the pipeline sets {field} to {value}; leave it empty "
                          f"(got {config[field]!r}).")
    config[field] = value


def check_config(config: ConfigDict) -> None:
    """What must agree across stages, checked before anything runs."""
    if config.simsiam.method != "simsiam" or config.sdr.method != "sdr":
        raise ConfigError("config.simsiam must be a SimSiam config and config.sdr an SDR config "
                          f"(got methods {config.simsiam.method!r}, {config.sdr.method!r}).")
    for field in _MODEL_SIZE_FIELDS:
        a, b = config.simsiam.model[field], config.sdr.model[field]
        if a != b:
            raise ConfigError(f"SimSiam and SDR must use the same model size: model.{field} is "
                              f"{a!r} for simsiam, {b!r} for sdr.")
    for field in ("dataset", "split", "image_size"):
        a, b = config.simsiam.data[field], config.sdr.data[field]
        if a != b:
            raise ConfigError(f"SimSiam and SDR must train on the same data: data.{field} is "
                              f"{a!r} for simsiam, {b!r} for sdr.")
    clustered_for = models.path_spec(load_config_file(config.cluster.sdr_config).model)
    trained = models.path_spec(config.sdr.model)
    if (clustered_for.num_groups, clustered_for.num_blocks) != (trained.num_groups,
                                                                 trained.num_blocks):
        raise ConfigError(
            f"cluster.sdr_config={config.cluster.sdr_config!r} has G={clustered_for.num_groups}, "
            f"L={clustered_for.num_blocks} but config.sdr has G={trained.num_groups}, "
            f"L={trained.num_blocks}: the clusters must be made for the SDRnet that is trained.")
    if not config.tasks:
        raise ConfigError("config.tasks is empty: name the downstream tasks to route.")
    route_lib.check_bn_mode(config.route.bn)


def run(config: ConfigDict, workdir: str, *, until: Optional[str] = None) -> dict[str, Any]:
    """Runs (or resumes) the stages up to `until` (default: all) and writes the summary.

    Returns {'finished': bool, 'stopped_in': stage or None, 'seconds': {stage: s}} plus, when
    every stage is done, the summary ('tasks', 'pictures', 'protocol').
    """
    if until is not None and until not in STAGES:
        raise ConfigError(f"until={until!r}: choose one of {STAGES}.")
    check_config(config)
    configs = stage_configs(config, workdir)
    dirs = stage_dirs(workdir)
    os.makedirs(workdir, exist_ok=True)
    lead = jax.process_index() == 0
    timings = _Timings(os.path.join(workdir, TIMINGS), write=lead)
    stages: dict[str, Callable[[], bool]] = {
        "simsiam": lambda: _train(simsiam_trainer.train_and_evaluate, configs["simsiam"],
                                  dirs["simsiam"], lead),
        "cluster": lambda: _cluster(configs["cluster"], dirs["cluster"], lead),
        "sdr": lambda: _train(sdr_trainer.train_and_evaluate, configs["sdr"], dirs["sdr"], lead),
        "route": lambda: _route_tasks(configs["route"], dirs["sdr"], config.tasks),
        "baseline": lambda: _baselines(configs["route"], dirs["simsiam"], dirs["baseline"],
                                       config.tasks, lead),
    }
    for name in STAGES[:STAGES.index(until) + 1 if until else len(STAGES)]:
        _say(lead, f"== pipeline stage {name}")
        start = time.perf_counter()
        try:
            finished = stages[name]()
        finally:
            timings.add(name, time.perf_counter() - start)
        if not finished:
            _say(lead, f"== pipeline stopped in stage {name}; run the same command again to "
                       "continue.")
            return {"finished": False, "stopped_in": name, "seconds": timings.seconds}
    if until is not None and until != STAGES[-1]:
        return {"finished": True, "stopped_in": None, "seconds": timings.seconds}
    summary = make_summary(configs["route"], dirs, config.tasks, timings.seconds)
    if lead:
        text = format_summary(summary)
        _write_atomic(os.path.join(workdir, SUMMARY_TXT), text + "\n")
        _write_atomic(os.path.join(workdir, SUMMARY_JSON), json.dumps(summary, indent=1))
        print(text, flush=True)
    return {"finished": True, "stopped_in": None, **summary}


# -- stages ------------------------------------------------------------------------------------

def _train(train_and_evaluate, config: ConfigDict, workdir: str, lead: bool) -> bool:
    if _finished(workdir, config):
        _say(lead, f"   skipped: finished ({os.path.join(workdir, MARKER)})")
        return True
    result = train_and_evaluate(config, workdir)
    if result["finished"] and lead:
        _mark(workdir, config, result)
    return result["finished"]


def _cluster(config: ConfigDict, workdir: str, lead: bool) -> bool:
    if _finished(workdir, config):
        _say(lead, f"   skipped: finished ({os.path.join(workdir, MARKER)})")
        return True
    result = cluster_job.run(config, workdir)
    if lead:
        _mark(workdir, config, {"seconds": result["seconds"], "skipped": result["skipped"]})
    return True


def _route_tasks(config: ConfigDict, sdr_workdir: str, task_names) -> bool:
    for task in task_names:
        ranking = _read_json(os.path.join(sdr_workdir, "route", task, "ranking.json"))
        if ranking is not None:
            _check_protocol(ranking, config, f"{sdr_workdir}/route/{task}")
            print(f"   {task}: routed already (best path {ranking['best']['path']})", flush=True)
            continue
        route_lib.route(config, sdr_workdir, task)
    return True


def _baselines(config: ConfigDict, simsiam_workdir: str, out_dir: str, task_names,
               lead: bool) -> bool:
    for task in task_names:
        path = os.path.join(out_dir, f"{task}.json")
        done = _read_json(path)
        if done is not None:
            _check_protocol(done, config, path)
            print(f"   {task}: evaluated already (kNN {done['knn']:.4f})", flush=True)
            continue
        result = downstream.evaluate(config, simsiam_workdir, task)
        if lead:
            _write_atomic(path, json.dumps({**result, **_protocol(config)}, indent=1))
    return True


# -- the summary -------------------------------------------------------------------------------

def _protocol(config: ConfigDict) -> dict[str, Any]:
    return {"bn": config.bn, "knn_k": config.knn_k, "knn_temperature": config.knn_temperature}


def _check_protocol(done: dict, config: ConfigDict, where: str) -> None:
    want = _protocol(config)
    got = {key: done.get(key) for key in want}
    if got != want:
        raise PipelineError(f"{where} was made with another kNN protocol ({got} there, {want} "
                            "now); delete it or use a new --workdir.")


def make_summary(route_config: ConfigDict, dirs: dict[str, str], task_names,
                 seconds: dict[str, float]) -> dict[str, Any]:
    tasks: dict[str, Any] = {}
    pictures = {"clusters": os.path.join(dirs["cluster"], cluster_job.CLUSTERS_PNG)}
    for task in task_names:
        ranking = _read_json(os.path.join(dirs["route"], task, "ranking.json"))
        baseline = _read_json(os.path.join(dirs["baseline"], f"{task}.json"))
        if ranking is None or baseline is None:
            raise PipelineError(f"task {task} has no routing or baseline result yet.")
        for got, name in ((ranking["num_train"], "memory"), (ranking["num_test"], "queries")):
            want = baseline["num_train" if name == "memory" else "num_test"]
            if got != want:  # both read the same splits with the same caps: must agree
                raise PipelineError(f"task {task}: {got} {name} images for routing but {want} "
                                    "for the SimSiam baseline; the kNN protocols differ.")
        tasks[task] = {"simsiam": baseline["knn"], "sdrnet": ranking["sdrnet"]["accuracy"],
                       "routed": ranking["best"]["accuracy"], "path": ranking["best"]["path"],
                       "path_index": ranking["best"]["index"], "num_paths": ranking["num_paths"],
                       "num_train": ranking["num_train"], "num_test": ranking["num_test"],
                       "simsiam_linear": baseline["linear"]}
        pictures[f"route/{task}"] = os.path.join(dirs["route"], task, "accuracy_hist.png")
    protocol = {**_protocol(route_config), "max_train": route_config.max_train,
                "max_test": route_config.max_test, "bn_recal_images": route_config.bn_recal_images}
    return {"tasks": tasks, "protocol": protocol, "seconds": dict(seconds), "pictures": pictures}


def format_summary(summary: dict[str, Any]) -> str:
    tasks = summary["tasks"]
    width = max(8, *(len(t) for t in tasks))
    lines = [f"{'task':<{width}}  {'SimSiam':>8}  {'SDRnet':>8}  {'routed':>8}  path (index)",
             f"{'-' * width}  {'-' * 8}  {'-' * 8}  {'-' * 8}  ------------"]
    for name, row in tasks.items():
        path = ",".join(str(p) for p in row["path"])
        lines.append(f"{name:<{width}}  {100 * row['simsiam']:7.2f}%  {100 * row['sdrnet']:7.2f}%"
                     f"  {100 * row['routed']:7.2f}%  {path} ({row['path_index']} of "
                     f"{row['num_paths']})")
    if tasks:
        means = {k: sum(r[k] for r in tasks.values()) / len(tasks)
                 for k in ("simsiam", "sdrnet", "routed")}
        lines.append(f"{'mean':<{width}}  {100 * means['simsiam']:7.2f}%  "
                     f"{100 * means['sdrnet']:7.2f}%  {100 * means['routed']:7.2f}%")
    p = summary["protocol"]
    lines += ["", f"kNN top-1 (k={p['knn_k']}, T={p['knn_temperature']}, bn={p['bn']}), memory: "
              f"first {p['max_train'] or 'all'} train images, queries: first "
              f"{p['max_test'] or 'all'} test images; routed = best path on those queries.",
              "wall time per stage (s): " + ", ".join(
                  f"{stage} {s:.1f}" for stage, s in summary["seconds"].items())
              + f"; total {sum(summary['seconds'].values()):.1f}"]
    return "\n".join(lines)


# -- markers and files -------------------------------------------------------------------------

def _comparable(config: ConfigDict) -> dict:
    data = json.loads(config.to_json_best_effort())
    for section, field in _RESUME_FIELDS:
        data.get(section, {}).pop(field, None)
    return data


def _finished(workdir: str, config: ConfigDict) -> bool:
    marker = _read_json(os.path.join(workdir, MARKER))
    if marker is None:
        return False
    if marker["config"] != _comparable(config):
        raise PipelineError(f"{workdir} was finished with another config; use a new --workdir "
                            "(or delete that stage's directory to redo it).")
    return True


def _mark(workdir: str, config: ConfigDict, result: dict) -> None:
    _write_atomic(os.path.join(workdir, MARKER),
                  json.dumps({"config": _comparable(config), "result": result}, indent=1))


class _Timings:
    """Wall seconds per stage, summed over the runs of the pipeline that ended (stopped,
    finished or raised); a process killed by a signal loses its time."""

    def __init__(self, path: str, write: bool):
        self.path, self.write = path, write
        self.seconds: dict[str, float] = _read_json(path) or {}

    def add(self, stage: str, seconds: float) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds
        if self.write:
            _write_atomic(self.path, json.dumps(self.seconds, indent=1))


def _read_json(path: str) -> Optional[dict]:
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def _write_atomic(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _say(lead: bool, message: str) -> None:
    if lead:
        print(message, flush=True)
