"""The whole SDR pipeline in one call: SimSiam -> clustering -> progressive SDR -> routing.

  python launch/pipeline.py --config=configs/pipeline_mosaic.py --workdir=DIR

Stages, each the existing library function, each in its own place under DIR:
  simsiam   `train.pretrain.train_and_evaluate` DIR/simsiam (the pre-training run, D0)
  cluster   `cluster.job.run`                   DIR/cluster (features, assignments.npz, clusters)
  sdr       `train.sdr.train_and_evaluate`      DIR/sdr (with DIR/cluster/assignments.npz)
  route     `route.route`, every task           DIR/sdr/route/<task>/ (ranking, histogram, sub-net)
  baseline  `eval.downstream.evaluate`          DIR/baseline/<task>.json (the SimSiam run, per task)
then DIR/summary.txt and DIR/summary.json.

The SSL method of pre-training and SDR is `config.method` (`--config.method=byol`: BYOL
pre-training and SDR over BYOL; both stages get the method with its default fields,
`config_base.use_method`). The stage keeps its name `simsiam` whatever the method.

Resume: a stage whose output is complete is skipped: the trainers and the cluster job leave a
marker (`pipeline_stage.json`, with the stage's config) when they finish; a task's routing is
complete when its `ranking.json` exists (route writes its directory atomically), its baseline
when `DIR/baseline/<task>.json` does. An unfinished stage is simply run again: the trainers
resume from their latest checkpoint and the cluster job skips the parts it already wrote. A
trainer stopped early (`train.max_steps_per_run`, preemption) stops the pipeline; the next run
continues from there. Output made with another config is an error, never silently reused:
a finished stage's marker is compared field by field; an unfinished trainer stage is checked by
the trainer itself (`checkpoint.check_workdir_config`: a changed trajectory field is refused),
surfaced as a one-line error naming the stage and the fields.

A pipeline workdir can be moved or copied: the wired paths (`cluster.pretrain_workdir`,
`sdr.sdr.assignments`, `sdr.sdr.init_from`) are absolute where the stages use them, but the
markers store every path inside DIR as `$WORKDIR/...`, so `cp -r DIR DIR2` and a run on DIR2
skips the stages finished in DIR. A trainer stage left unfinished in DIR records its absolute
wiring in its own `config.json`; in the copy, that record is rebased onto DIR2 (the same inputs
at the same place in the new workdir; the move is logged in the stage's `config_history.jsonl`)
and the stage continues.

One protocol for every column, the routing config's (`config.route`, `eval/protocol.py`): the
task's first `max_train` train images are split by a seeded permutation of their ids
(`split_seed`) into a routing-validation part (`val_fraction`) and the kNN memory (the rest);
the queries are the first `max_test` test images (0 = all); k = `knn_k`, T = `knn_temperature`,
BN per `bn` (default 'recalibrate': every network's statistics re-estimated on the same
`bn_recal_images` train images). Columns, all scored once on the test queries with that memory:
raw pixels and a randomly initialised network of the run's architecture (what "learned
nothing" scores), SimSiam (`evaluate` of the SimSiam run), the SDRnet (all groups), the routed
sub-net (the path with the best kNN accuracy on the validation part: chosen without the test
labels) and the oracle (the best path on the test queries: a maximum over noisy estimates,
biased upward; a reference, not a result). Every cell carries its 95% interval and, against
SimSiam, a marker saying whether the difference is within noise; the linear probe (weight decay
chosen on the validation part) sits beside kNN for SimSiam, random init, SDRnet and routed.
"""
from __future__ import annotations

import copy
import json
import os
import time
from typing import Any, Callable, Optional

import jax
from ml_collections import ConfigDict

from sdr_jax import config_base, methods, models

from sdr_jax.jobs import route as route_lib
from sdr_jax.jobs.cluster import job as cluster_job
from sdr_jax.config_base import load_config_file
from sdr_jax.core import io
from sdr_jax.core.errors import CheckpointError, ConfigError, SDRError
from sdr_jax.jobs import evaluate as evaluate_job
from sdr_jax.eval import protocol
from sdr_jax.train import pretrain as pretrain_trainer
from sdr_jax.train import checkpoint as checkpoint_lib
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
    for stage in (simsiam, sdr):
        if stage.method.name != config.method:
            config_base.use_method(stage, config.method)
    if config.data_dir:
        simsiam.data.data_dir = sdr.data.data_dir = config.data_dir
    _wire(cluster, "pretrain_workdir", os.path.abspath(dirs["simsiam"]))
    _wire(sdr.sdr, "assignments",
          os.path.abspath(os.path.join(dirs["cluster"], cluster_job.ASSIGNMENTS_FILE)))
    if config.sdr_from_simsiam:  # the SimSiam run is progressive training's stage 0, done
        _wire(sdr.sdr, "init_from", os.path.abspath(dirs["simsiam"]))
    return {"simsiam": simsiam, "cluster": cluster, "sdr": sdr, "route": config.route}


def _wire(config: ConfigDict, field: str, value: str) -> None:
    if config[field] and os.path.abspath(config[field]) != value:
        raise ConfigError(f"the pipeline sets {field} to {value}; leave it empty "
                          f"(got {config[field]!r}).")
    config[field] = value


def check_config(config: ConfigDict) -> None:
    """What must agree across stages, checked before anything runs."""
    if config.simsiam.kind != "pretrain" or config.sdr.kind != "sdr":
        raise ConfigError("config.simsiam must be a pre-training config and config.sdr an SDR "
                          f"config (got kinds {config.simsiam.kind!r}, {config.sdr.kind!r}).")
    methods.method_class(config.method)  # a ConfigError naming the known methods
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
    protocol.check_config(config.route)


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
    io.makedirs(workdir)
    lead = jax.process_index() == 0
    timings = _Timings(os.path.join(workdir, TIMINGS), write=lead)
    stages: dict[str, Callable[[], bool]] = {
        "simsiam": lambda: _train("simsiam", pretrain_trainer.train_and_evaluate,
                                  configs["simsiam"], workdir, dirs["simsiam"], lead),
        "cluster": lambda: _cluster(configs["cluster"], workdir, dirs["cluster"], lead),
        "sdr": lambda: _train("sdr", sdr_trainer.train_and_evaluate, configs["sdr"], workdir,
                              dirs["sdr"], lead),
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
    summary = make_summary(configs["route"], dirs, config.tasks, timings.seconds,
                           method=config.method)
    if lead:
        text = format_summary(summary)
        io.write_text(os.path.join(workdir, SUMMARY_TXT), text + "\n")
        io.write_json(os.path.join(workdir, SUMMARY_JSON), summary)
        print(text, flush=True)
    return {"finished": True, "stopped_in": None, **summary}


# -- stages ------------------------------------------------------------------------------------

def _train(stage: str, train_and_evaluate, config: ConfigDict, root: str, workdir: str,
           lead: bool) -> bool:
    if _finished(root, workdir, config):
        _say(lead, f"   skipped: finished ({os.path.join(workdir, MARKER)})")
        return True
    if lead:
        _follow_move(root, workdir, config)
    try:
        result = train_and_evaluate(config, workdir)
    except CheckpointError as error:  # e.g. an unfinished run resumed with a changed field
        raise PipelineError(f"pipeline stage {stage}: {error}") from error
    if result["finished"] and lead:
        _mark(root, workdir, config, result)
    return result["finished"]


def _cluster(config: ConfigDict, root: str, workdir: str, lead: bool) -> bool:
    if _finished(root, workdir, config):
        _say(lead, f"   skipped: finished ({os.path.join(workdir, MARKER)})")
        return True
    result = cluster_job.run(config, workdir)
    if lead:
        _mark(root, workdir, config, {"seconds": result["seconds"], "skipped": result["skipped"]})
    return True


def _route_tasks(config: ConfigDict, sdr_workdir: str, task_names) -> bool:
    for task in task_names:
        ranking = io.read_json(os.path.join(sdr_workdir, "route", task, "ranking.json"))
        if ranking is not None:
            _check_protocol(ranking, config, f"{sdr_workdir}/route/{task}")
            print(f"   {task}: routed already (path {ranking['routed']['path']})", flush=True)
            continue
        route_lib.route(config, sdr_workdir, task)
    return True


def _baselines(config: ConfigDict, simsiam_workdir: str, out_dir: str, task_names,
               lead: bool) -> bool:
    for task in task_names:
        path = os.path.join(out_dir, f"{task}.json")
        done = io.read_json(path)
        if done is not None:
            _check_protocol(done, config, path)
            print(f"   {task}: evaluated already (kNN "
                  f"{done['knn']['test']['accuracy']:.4f})", flush=True)
            continue
        # The raw-pixel and random-init baselines come from routing, on the same split.
        result = evaluate_job.evaluate(config, simsiam_workdir, task, baselines=False)
        if lead:
            io.write_json(path, result)
    return True


# -- the summary -------------------------------------------------------------------------------

def _check_protocol(done: dict, config: ConfigDict, where: str) -> None:
    """A result made with another protocol (split, k, T, BN, probe sweep, ...) is refused."""
    want, got = protocol.describe(config), done.get("protocol")
    if got != want:
        changed = sorted(k for k in want if (got or {}).get(k) != want[k])
        raise PipelineError(f"{where} was made with another evaluation protocol ({changed} "
                            "differ); delete it or use a new --workdir.")


# Columns of the summary, in table order: (key, header). All kNN on the test queries.
KNN_COLUMNS = (("pixels", "pixels"), ("random_init", "random"), ("simsiam", "SimSiam"),
               ("sdrnet", "SDRnet"), ("routed", "routed"), ("oracle", "oracle"))
LINEAR_COLUMNS = (("random_init", "random"), ("simsiam", "SimSiam"), ("sdrnet", "SDRnet"),
                  ("routed", "routed"))
REFERENCE = "simsiam"  # the column every other is marked against


def make_summary(route_config: ConfigDict, dirs: dict[str, str], task_names,
                 seconds: dict[str, float], method: str = "simsiam") -> dict[str, Any]:
    tasks: dict[str, Any] = {}
    pictures = {"clusters": os.path.join(dirs["cluster"], cluster_job.CLUSTERS_PNG)}
    for task in task_names:
        ranking = io.read_json(os.path.join(dirs["route"], task, "ranking.json"))
        baseline = io.read_json(os.path.join(dirs["baseline"], f"{task}.json"))
        if ranking is None or baseline is None:
            raise PipelineError(f"task {task} has no routing or baseline result yet.")
        for key in ("num_validation", "num_memory", "num_test"):
            if ranking["split"][key] != baseline["split"][key]:  # one split: must agree
                raise PipelineError(f"task {task}: {key} is {ranking['split'][key]} for routing "
                                    f"but {baseline['split'][key]} for the SimSiam baseline; "
                                    "the protocols differ.")
        scores = {**{key: ranking[key] for key in ("pixels", "random_init", "sdrnet", "routed",
                                                   "oracle")}, "simsiam": baseline}
        tasks[task] = {
            "knn": {key: scores[key]["knn"]["test"] for key, _ in KNN_COLUMNS},
            "linear": {key: scores[key]["linear"]["test"] for key, _ in LINEAR_COLUMNS},
            "routed_validation": ranking["routed"]["knn"]["validation"],
            "path": ranking["routed"]["path"], "path_index": ranking["routed"]["index"],
            "oracle_path": ranking["oracle"]["path"], "oracle_index": ranking["oracle"]["index"],
            "num_paths": ranking["num_paths"], "composition": ranking["composition"],
            "paths_within_noise": ranking.get("paths_within_noise"),
            **{key: ranking["split"][key] for key in ("num_validation", "num_memory",
                                                      "num_test")}}
        pictures[f"route/{task}"] = os.path.join(dirs["route"], task, "accuracy_hist.png")
    mean = {kind: {key: protocol.mean_cell([row[kind][key] for row in tasks.values()])
                   for key, _ in columns}
            for kind, columns in (("knn", KNN_COLUMNS), ("linear", LINEAR_COLUMNS))} \
        if tasks else {}
    return {"tasks": tasks, "mean": mean, "protocol": protocol.describe(route_config),
            "seconds": dict(seconds), "pictures": pictures, "method": method}


def format_summary(summary: dict[str, Any]) -> str:
    tasks, mean, p = summary["tasks"], summary["mean"], summary["protocol"]
    width = max(8, *(len(t) for t in tasks))
    cell = 20
    base = methods.method_class(summary.get("method", "simsiam")).title  # the pre-training column

    def table(kind: str, columns) -> list[str]:
        columns = [(key, base if key == REFERENCE else header) for key, header in columns]
        lines = [f"{'task':<{width}}  " + "  ".join(f"{h:>{cell}}" for _, h in columns),
                 f"{'-' * width}  " + "  ".join("-" * cell for _ in columns)]
        rows = [(name, row[kind]) for name, row in tasks.items()]
        rows += [("mean", mean[kind])] if mean else []
        for name, cells in rows:
            lines.append(f"{name:<{width}}  " + "  ".join(
                f"{protocol.format_cell(cells[key], cells[REFERENCE]):>{cell}}"
                for key, _ in columns))
        return lines

    lines = ["kNN top-1 on the test queries:"] + table("knn", KNN_COLUMNS)
    lines += ["", "linear probe on the test queries (weight decay chosen on validation):"]
    lines += table("linear", LINEAR_COLUMNS)
    lines += ["", "routed path (chosen on validation; the paths within its noise: those the "
              "validation queries cannot tell from it, paired at 1.96 standard errors) vs oracle "
              "(best on test), and what the routed leaf trained on:"]
    for name, row in tasks.items():
        path = ",".join(str(x) for x in row["path"])
        oracle = ",".join(str(x) for x in row["oracle_path"])
        ties = row.get("paths_within_noise")
        tied = f"; {ties} of {row['num_paths']} within its noise" if ties is not None else ""
        lines.append(f"{name:<{width}}  {path} ({row['path_index']} of {row['num_paths']}, "
                     f"validation {100 * row['routed_validation']['accuracy']:.2f}%{tied}), oracle "
                     f"{oracle} ({row['oracle_index']}); "
                     f"{route_lib.format_composition(row['composition'])}")
    sizes = "; ".join(f"{name} {row['num_validation']}/{row['num_memory']}/{row['num_test']}"
                      for name, row in tasks.items())
    lines += ["", protocol.NOISE_LEGEND.replace("vs SimSiam", f"vs {base}") + ".",
              f"Protocol: k={p['knn_k']}, T={p['knn_temperature']}, bn={p['bn']}; train capped "
              f"at {p['max_train'] or 'all'} images, split by seed {p['split_seed']} into "
              f"validation ({p['val_fraction']:g}) and memory; queries: "
              f"{p['max_test'] or 'all'} test images. validation/memory/test per task: {sizes}.",
              "pixels = raw pixels (memory-mean centred); random = the architecture at its "
              f"seed-{p['random_init_seed']} init; routed = best path on validation; oracle = "
              "best path on test (optimistic, a reference only).",
              "wall time per stage (s): " + ", ".join(
                  f"{stage} {s:.1f}" for stage, s in summary["seconds"].items())
              + f"; total {sum(summary['seconds'].values()):.1f}"]
    return "\n".join(lines)


# -- markers and files -------------------------------------------------------------------------

WORKDIR_TOKEN = "$WORKDIR"  # stands for the pipeline workdir in the paths a marker stores


def _relative_to(root: str, data: Any) -> Any:
    """`data` with every string path inside `root` written as `$WORKDIR/<relative path>`.

    The wiring makes those paths absolute (the stages read them from any cwd); stored that way
    a copied or moved pipeline workdir would look like another config. Markers written before
    this rule hold absolute paths; those in place still compare equal (both sides go through
    this function)."""
    if isinstance(data, dict):
        return {key: _relative_to(root, value) for key, value in data.items()}
    if isinstance(data, list):
        return [_relative_to(root, value) for value in data]
    if isinstance(data, str) and os.path.isabs(data):
        root = os.path.abspath(root)
        if data == root or data.startswith(root + os.sep):
            return os.path.join(WORKDIR_TOKEN, os.path.relpath(data, root))
    return data


def _follow_move(root: str, workdir: str, config: ConfigDict) -> None:
    """Rebases an unfinished trainer stage's recorded wiring onto a moved or copied workdir.

    The run's `config.json` holds the absolute paths the pipeline wired when it started (e.g.
    OLD/cluster/assignments.npz). A recorded path that ends with the same path inside this
    workdir as the one wired now is the same input, moved with the workdir: the record takes
    the new path, so the trainer's own check sees no change. Any other difference is left for
    the trainer to judge."""
    path = os.path.join(workdir, checkpoint_lib.CONFIG_FILE)
    recorded = io.read_json(path)
    if recorded is None:
        return
    current = json.loads(config.to_json_best_effort())
    moved = {}
    for key, (old, new) in checkpoint_lib.changed_fields(recorded, current).items():
        inside = _relative_to(root, new)
        if not (isinstance(old, str) and os.path.isabs(old) and inside != new):
            continue
        if old.endswith(os.sep + os.path.relpath(inside, WORKDIR_TOKEN)):
            moved[key] = (old, new)
    if not moved:
        return
    for key, (_, new) in moved.items():
        *sections, field = key.split(".")
        node = recorded
        for section in sections:
            node = node[section]
        node[field] = new
    io.write_json(path, recorded, indent=2, sort_keys=True)
    io.append_line(os.path.join(workdir, checkpoint_lib.HISTORY_FILE),
                   json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                               "moved": {k: {"was": old, "now": new}
                                         for k, (old, new) in moved.items()}}))
    print(f"   {workdir}: continues after a move of the pipeline workdir "
          f"({', '.join(sorted(moved))} rebased)", flush=True)


def _comparable(root: str, config: Any) -> dict:
    data = json.loads(config.to_json_best_effort()) if isinstance(config, ConfigDict) \
        else copy.deepcopy(config)
    for section, field in _RESUME_FIELDS:
        data.get(section, {}).pop(field, None)
    return _relative_to(root, data)


def _finished(root: str, workdir: str, config: ConfigDict) -> bool:
    marker = io.read_json(os.path.join(workdir, MARKER))
    if marker is None:
        return False
    recorded, wanted = _comparable(root, marker["config"]), _comparable(root, config)
    if recorded != wanted:
        named = "; ".join(f"{k}: {old!r} there, {new!r} now" for k, (old, new) in
                          checkpoint_lib.changed_fields(recorded, wanted).items())
        raise PipelineError(f"{workdir} was finished with another config ({named}); use a new "
                            "--workdir (or delete that stage's directory to redo it).")
    return True


def _mark(root: str, workdir: str, config: ConfigDict, result: dict) -> None:
    io.write_json(os.path.join(workdir, MARKER),
                  {"config": _comparable(root, config), "result": result})


class _Timings:
    """Wall seconds per stage, summed over the runs of the pipeline that ended (stopped,
    finished or raised); a process killed by a signal loses its time."""

    def __init__(self, path: str, write: bool):
        self.path, self.write = path, write
        self.seconds: dict[str, float] = io.read_json(path) or {}

    def add(self, stage: str, seconds: float) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds
        if self.write:
            io.write_json(self.path, self.seconds)


def _say(lead: bool, message: str) -> None:
    if lead:
        print(message, flush=True)
