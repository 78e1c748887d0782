"""Issue 12's experiments: a set of arms (pipeline runs with a few fields changed), then a report.

  python launch/experiments.py --config=configs/experiments_mosaic.py --workdir=runs/exp

Every arm (configs/experiments_mosaic.py) runs in WORKDIR/<arm name>:
  'pipeline'  `pipeline.run` of the arm's pipeline config (summary.json with every column);
  'simsiam'   `pipeline.run(..., until='simsiam')`, then the SimSiam column of the summary on
              every task (`jobs.evaluate.evaluate`, the routing protocol) in WORKDIR/<arm>/
              baseline/<task>.json, summarised in WORKDIR/<arm>/summary.json.
An arm with `share_from` links the finished stages it shares (`shared`) to that arm's
directories (relative symlinks), so the pipeline skips them.

Resume: an arm is finished when WORKDIR/<arm>/arm.json exists (written last, with the arm's
definition, the command, the machine and the wall times); a finished arm made with another
definition is an error, never silently reused. An unfinished arm is run again: the pipeline
resumes its stages.

The report (`write_report`, also alone with --report_only) is made from the run directories
only: every number comes from a summary.json written by the pipeline (eval/protocol.py's
cells, intervals and noise markers), none is recomputed from features.
"""
from __future__ import annotations

import copy
import datetime
import json
import math
import os
import platform
import shlex
import subprocess
import time
from typing import Any, Optional, Sequence

from ml_collections import ConfigDict

from sdr_jax.config_base import load_config_file
from sdr_jax.core import io
from sdr_jax.core.errors import NonFiniteLossError, SDRError
from sdr_jax.eval import protocol

KINDS = ("pipeline", "simsiam")
STUDIES = ("headline", "negative_transfer", "ablation")
SHAREABLE = ("simsiam", "cluster", "baseline")
ARM_FILE, SUMMARY_FILE, TIMINGS_FILE = "arm.json", "summary.json", "timings.json"
FAILED_FILE = "failed.json"  # an arm whose training diverged (NonFiniteLossError)
PLOT_FILES = {"headline": "results_headline.png", "negative_transfer": "results_transfer.png"}
# The per-arm fields that define what an arm makes (compared on resume).
_DEFINITION = ("kind", "overrides", "share_from", "shared")


class ExperimentError(SDRError):
    """An experiments config, arm name or run directory that does not fit."""


# -- the config --------------------------------------------------------------------------------

def check_config(config: ConfigDict) -> None:
    names = [arm.name for arm in config.arms]
    if not names:
        raise ExperimentError("config.arms is empty: name at least one arm.")
    for index, arm in enumerate(config.arms):
        if names.count(arm.name) > 1:
            raise ExperimentError(f"arm name {arm.name!r} is used twice.")
        if arm.kind not in KINDS:
            raise ExperimentError(f"arm {arm.name}: kind {arm.kind!r}; choose one of {KINDS}.")
        if arm.study not in STUDIES:
            raise ExperimentError(f"arm {arm.name}: study {arm.study!r}; choose one of "
                                  f"{STUDIES}.")
        if arm.share_from:
            earlier = names[:index]
            if arm.share_from not in earlier:
                raise ExperimentError(f"arm {arm.name}: share_from={arm.share_from!r} is not an "
                                      f"earlier arm ({earlier}).")
            bad = sorted(set(arm.shared) - set(SHAREABLE))
            if bad or not arm.shared:
                raise ExperimentError(f"arm {arm.name}: shared={tuple(arm.shared)}; name some of "
                                      f"{SHAREABLE}.")
        elif arm.shared:
            raise ExperimentError(f"arm {arm.name}: shared stages need share_from.")
    if config.ablation_reference and config.ablation_reference not in names:
        raise ExperimentError(f"ablation_reference={config.ablation_reference!r} is not an arm.")


def select_arms(config: ConfigDict, names: Optional[Sequence[str]]) -> list[ConfigDict]:
    """The arms named (all when `names` is empty), in the config's order."""
    known = [arm.name for arm in config.arms]
    unknown = [name for name in names or () if name not in known]
    if unknown:
        raise ExperimentError(f"unknown arm {unknown[0]!r}; the arms are {', '.join(known)}.")
    return [arm for arm in config.arms if not names or arm.name in names]


def arm_config(config: ConfigDict, arm: ConfigDict) -> ConfigDict:
    """The arm's pipeline config: config.pipeline with the arm's overrides."""
    pipeline_config = copy.deepcopy(load_config_file(config.pipeline))
    if config.data_dir:
        pipeline_config.data_dir = config.data_dir
    for field, value in arm.overrides:
        *sections, leaf = field.split(".")
        node = pipeline_config
        try:
            for section in sections:
                node = node[section]
            if leaf not in node:
                raise KeyError(leaf)
            node[leaf] = value
        except (KeyError, AttributeError, TypeError) as error:
            raise ExperimentError(f"arm {arm.name}: cannot set {field}={value!r} on "
                                  f"{config.pipeline} ({error}).") from error
    return pipeline_config


def equivalent_command(config: ConfigDict, arm: ConfigDict, workdir: str) -> str:
    """The launch/pipeline.py command that makes this arm (shared stages aside)."""
    words = ["python", "launch/pipeline.py", f"--config={config.pipeline}",
             f"--workdir={os.path.join(workdir, arm.name)}"]
    words += [f"--config.{field}=\"{value!r}\"" if isinstance(value, (tuple, list))
              else f"--config.{field}={shlex.quote(str(value))}" for field, value in arm.overrides]
    if arm.kind == "simsiam":
        words.append("--until=simsiam")
    command = " ".join(words)
    if arm.kind == "simsiam":
        command += "  # then launch/evaluate.py --workdir=.../simsiam on every task"
    if arm.share_from:
        command += f"  # with {', '.join(arm.shared)} linked from {arm.share_from}"
    return command


# -- running -----------------------------------------------------------------------------------

def run(config: ConfigDict, workdir: str, *, arms: Optional[Sequence[str]] = None,
        report: Optional[str] = None, command: str = "") -> dict[str, str]:
    """Runs (or resumes) the selected arms in order, then writes the report.

    Returns {arm name: 'skipped' | 'finished' | 'failed' | 'stopped'}: a diverged arm
    (NonFiniteLossError) is recorded in its failed.json and the next arm runs; a stopped arm
    (a trainer's max_steps_per_run) ends the run before the report: run it again to continue."""
    check_config(config)
    selected = select_arms(config, arms)
    for arm in selected:  # every override is checked before anything runs
        arm_config(config, arm)
    os.makedirs(workdir, exist_ok=True)
    status: dict[str, str] = {}
    for arm in selected:
        print(f"==== arm {arm.name} ({arm.study}, {arm.kind})", flush=True)
        try:
            status[arm.name] = run_arm(config, arm, workdir, command)
        except NonFiniteLossError as error:  # a result (e.g. a diverging ablation), not a bug
            _write_json(os.path.join(workdir, arm.name, FAILED_FILE), {
                "error": str(error).splitlines()[0], "command": command,
                "at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")})
            print(f"==== arm {arm.name} failed: {str(error).splitlines()[0]}", flush=True)
            status[arm.name] = "failed"
            continue
        if status[arm.name] == "stopped":
            print(f"==== arm {arm.name} stopped; run the same command again to continue.",
                  flush=True)
            return status
    write_report(config, workdir, report or config.report)
    return status


def run_arm(config: ConfigDict, arm: ConfigDict, workdir: str, command: str) -> str:
    from sdr_jax.jobs import pipeline  # the jobs' modules load only when something runs
    arm_dir = os.path.join(workdir, arm.name)
    record = io.read_json(os.path.join(arm_dir, ARM_FILE))
    if record is not None:
        _check_definition(record, arm, arm_dir)
        print(f"   skipped: finished ({os.path.join(arm_dir, ARM_FILE)})", flush=True)
        return "skipped"
    pipeline_config = arm_config(config, arm)
    if arm.share_from:
        _link_shared(arm, workdir)
    load_before = os.getloadavg()
    start = time.perf_counter()
    if arm.kind == "pipeline":
        result = pipeline.run(pipeline_config, arm_dir)
    else:
        result = pipeline.run(pipeline_config, arm_dir, until="simsiam")
        if result["finished"]:
            _simsiam_summary(pipeline_config, arm_dir)
    if not result["finished"]:
        return "stopped"
    if os.path.exists(os.path.join(arm_dir, FAILED_FILE)):
        os.remove(os.path.join(arm_dir, FAILED_FILE))
    _write_json(os.path.join(arm_dir, ARM_FILE), {
        "name": arm.name, "study": arm.study, **_definition(arm), "pipeline": config.pipeline,
        "command": command, "equivalent_command": equivalent_command(config, arm, workdir),
        "machine": machine(), "code": code_version(),
        "load_average": {"start": load_before, "end": os.getloadavg()},
        "seconds_this_run": time.perf_counter() - start,
        "finished_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")})
    return "finished"


def _definition(arm: ConfigDict) -> dict[str, Any]:
    return json.loads(json.dumps({key: arm[key] for key in _DEFINITION}))


def _check_definition(record: dict, arm: ConfigDict, arm_dir: str) -> None:
    wanted = _definition(arm)
    changed = [key for key in _DEFINITION if record.get(key) != wanted[key]]
    if changed:
        raise ExperimentError(f"{arm_dir} was finished with another definition of arm {arm.name} "
                              f"({', '.join(changed)} differ); delete it or use another "
                              "--workdir.")


def _link_shared(arm: ConfigDict, workdir: str) -> None:
    arm_dir = os.path.join(workdir, arm.name)
    os.makedirs(arm_dir, exist_ok=True)
    for stage in arm.shared:
        source = os.path.join(workdir, arm.share_from, stage)
        link = os.path.join(arm_dir, stage)
        if not os.path.isdir(source):
            raise ExperimentError(f"arm {arm.name} shares {stage} with arm {arm.share_from}, but "
                                  f"{source} does not exist: run {arm.share_from} first.")
        target = os.path.relpath(source, arm_dir)
        if os.path.islink(link) and os.readlink(link) == target:
            continue
        if os.path.lexists(link):
            raise ExperimentError(f"{link} exists and is not a link to {source}; delete it to "
                                  f"share {stage} with arm {arm.share_from}.")
        os.symlink(target, link)


def _simsiam_summary(pipeline_config: ConfigDict, arm_dir: str) -> None:
    """The SimSiam column of the pipeline's summary, every task, the routing protocol."""
    from sdr_jax.jobs import evaluate as evaluate_job
    route_config = pipeline_config.route
    start = time.perf_counter()
    tasks: dict[str, Any] = {}
    for task in pipeline_config.tasks:
        path = os.path.join(arm_dir, "baseline", f"{task}.json")
        result = io.read_json(path)
        if result is not None and result.get("protocol") != protocol.describe(route_config):
            raise ExperimentError(f"{path} was made with another evaluation protocol; delete it.")
        if result is None:
            result = evaluate_job.evaluate(route_config, os.path.join(arm_dir, "simsiam"), task,
                                         baselines=False)
            _write_json(path, result)
        print(f"   {task}: kNN {100 * result['knn']['test']['accuracy']:.2f}%", flush=True)
        tasks[task] = {"knn": {"simsiam": result["knn"]["test"]},
                       "linear": {"simsiam": result["linear"]["test"]},
                       **{key: result["split"][key] for key in ("num_validation", "num_memory",
                                                                "num_test")}}
    timings_path = os.path.join(arm_dir, TIMINGS_FILE)
    seconds = io.read_json(timings_path, {})
    seconds["baseline"] = seconds.get("baseline", 0.0) + time.perf_counter() - start
    _write_json(timings_path, seconds)
    mean = {kind: {"simsiam": protocol.mean_cell([row[kind]["simsiam"]
                                                  for row in tasks.values()])}
            for kind in ("knn", "linear")}
    _write_json(os.path.join(arm_dir, SUMMARY_FILE),
                {"tasks": tasks, "mean": mean, "protocol": protocol.describe(route_config),
                 "seconds": seconds})


def machine() -> dict[str, Any]:
    import jax
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f
                        if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "jax": jax.__version__,
            "devices": [str(d) for d in jax.devices()]}


def code_version() -> dict[str, Any] | None:
    """The git commit of the sdr_jax checkout that runs the arm, and whether tracked files
    differ from it; None outside a git checkout (e.g. an installed wheel) or without git."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    git = lambda *args: subprocess.run(  # noqa: E731
        ["git", "-C", root, *args], capture_output=True, text=True, check=True, timeout=30
    ).stdout.strip()
    try:
        return {"commit": git("rev-parse", "HEAD"),
                "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.SubprocessError):
        return None


def _commit(record: dict[str, Any] | None) -> str:
    code = (record or {}).get("code")
    if not code:
        return "-"
    return code["commit"][:10] + (" (modified)" if code["dirty"] else "")


# -- the report --------------------------------------------------------------------------------

KNN_COLUMNS = (("pixels", "pixels"), ("random_init", "random"), ("simsiam", "SimSiam"),
               ("sdrnet", "SDRnet"), ("routed", "routed"), ("oracle", "oracle"))
LINEAR_COLUMNS = (("random_init", "random"), ("simsiam", "SimSiam"), ("sdrnet", "SDRnet"),
                  ("routed", "routed"))


def load_arms(config: ConfigDict, workdir: str) -> list[dict[str, Any]]:
    """What the report reads of every arm: arm.json, summary.json, timings, cluster summary
    (None where missing; an arm without arm.json is unfinished and its numbers are not used)."""
    arms = []
    for arm in config.arms:
        arm_dir = os.path.join(workdir, arm.name)
        record = io.read_json(os.path.join(arm_dir, ARM_FILE))
        summary = io.read_json(os.path.join(arm_dir, SUMMARY_FILE)) if record else None
        arms.append({"arm": arm, "dir": arm_dir, "record": record,
                     "failed": io.read_json(os.path.join(arm_dir, FAILED_FILE)),
                     "summary": summary,
                     "timings": io.read_json(os.path.join(arm_dir, TIMINGS_FILE), {}),
                     "cluster": io.read_json(os.path.join(arm_dir, "cluster", "summary.json"))})
    return arms


def write_report(config: ConfigDict, workdir: str, path: str) -> str:
    """Writes the Markdown report (and its plots, next to it) from the run directories."""
    check_config(config)
    arms = load_arms(config, workdir)
    out_dir = os.path.dirname(os.path.abspath(path))
    os.makedirs(out_dir, exist_ok=True)
    plots = _plots(arms, out_dir) if config.plots else {}
    text = "\n".join(format_report(config, workdir, arms, plots)) + "\n"
    io.write_text(path, text)
    print(f"==== report: {path}", flush=True)
    return text


def format_report(config: ConfigDict, workdir: str, arms: list[dict[str, Any]],
                  plots: dict[str, str]) -> list[str]:
    done = [a for a in arms if a["summary"] is not None]
    lines = ["# Results: a miniature reproduction of SDR's claims (issue 12)", "",
             "Generated by `sdr_jax/jobs/experiments.py` from the run directories under "
             f"`{workdir}` (do not edit by hand; rerun with `--report_only`). "
             f"Experiments config: `{config.pipeline}` per arm, arms of "
             f"`configs/experiments_mosaic.py`. {len(done)} of {len(arms)} arms finished.", ""]
    if done:
        lines += _setup(done)
    lines += _headline(arms, plots) + _transfer(arms, plots) + _routing(arms)
    lines += _ablations(arms, config.ablation_reference) + _times(config, arms, workdir)
    failed = [a for a in arms if a["summary"] is None and a["failed"]]
    if failed:
        lines += ["## Failed", ""] + [f"- `{a['arm'].name}` ({a['arm'].note or a['arm'].study}): "
                                      f"{a['failed']['error']} ({a['failed']['at']})"
                                      for a in failed] + [""]
    missing = [a["arm"].name for a in arms if a["summary"] is None and not a["failed"]]
    if missing:
        lines += ["## Not run", "", "These arms have no finished run directory (they did not fit "
                  f"the budget or were not selected): {', '.join(missing)}.", ""]
    if config.notes:
        lines += ["## Discussion", "", f"(Written by hand in `{config.notes}`, included as is.)",
                  ""] + _notes(config.notes)
    return lines


def _notes(path: str) -> list[str]:
    repo_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    found = next((p for p in (path, os.path.join(repo_root, path)) if os.path.isfile(p)), None)
    if found is None:
        return [f"(`{path}` does not exist yet.)", ""]
    with open(found) as f:
        return f.read().rstrip("\n").splitlines() + [""]


def _setup(done: list[dict[str, Any]]) -> list[str]:
    p = done[0]["summary"]["protocol"]
    rows = done[0]["summary"]["tasks"]
    sizes = "; ".join(f"{name} {row['num_validation']}/{row['num_memory']}/{row['num_test']}"
                      for name, row in rows.items())
    return ["## Protocol", "",
            "Every number is a kNN top-1 accuracy (%) on the task's test queries, from the "
            "pipeline's summary (`sdr_jax/eval/protocol.py`): k="
            f"{p['knn_k']}, T={p['knn_temperature']}, BN {p['bn']}; the task's first "
            f"{p['max_train'] or 'all'} train images split (seed {p['split_seed']}) into "
            f"routing-validation ({p['val_fraction']:g}) and kNN memory; queries: "
            f"{p['max_test'] or 'all'} test images (validation/memory/test: {sizes}). The routed "
            "sub-net is the path with the best kNN accuracy on the validation part (no test "
            "label is used to choose it); the oracle is the best path on test (optimistic, a "
            "reference only).", "",
            f"Cells: `accuracy [95% interval]marker`. {protocol.NOISE_LEGEND}; in the tables "
            "below the marker compares with the column or row named as the reference.", ""]


def _by_study(arms: list[dict[str, Any]], study: str) -> list[dict[str, Any]]:
    return [a for a in arms if a["arm"].study == study]


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + \
        ["| " + " | ".join(row) + " |" for row in rows]


def _cell(c: Optional[dict[str, Any]], reference: Optional[dict[str, Any]] = None) -> str:
    return protocol.format_cell(c, reference) if c else "-"


def _headline(arms: list[dict[str, Any]], plots: dict[str, str]) -> list[str]:
    headline = [a for a in _by_study(arms, "headline") if a["summary"]]
    lines = ["## 1. SDR vs SimSiam", "",
             "Each seed is a whole pipeline (SimSiam on the pool, clustering, progressive SDR "
             "from the SimSiam weights, routing). Mean over the tasks; markers vs SimSiam.", ""]
    if not headline:
        return lines + ["No headline arm finished.", ""]
    for kind, columns in (("knn", KNN_COLUMNS), ("linear", LINEAR_COLUMNS)):
        rows = []
        for a in headline:
            mean = a["summary"]["mean"][kind]
            rows.append([a["arm"].name] + [_cell(mean[key], mean["simsiam"])
                                           for key, _ in columns])
        title = "kNN" if kind == "knn" else "linear probe (weight decay chosen on validation)"
        lines += [f"Mean {title}:", ""] + _table(["arm"] + [h for _, h in columns], rows) + [""]
    if "headline" in plots:
        lines += [f"![mean kNN per column and seed]({plots['headline']})", ""]
    diffs = []
    for a in headline:
        mean = a["summary"]["mean"]["knn"]
        diff = 100 * (mean["routed"]["accuracy"] - mean["simsiam"]["accuracy"])
        half = 100 * protocol.Z95 * math.sqrt(mean["routed"]["variance"] +
                                              mean["simsiam"]["variance"])
        diffs.append(diff)
        lines.append(f"- {a['arm'].name}: routed - SimSiam = {diff:+.2f} points (noise "
                     f"threshold +-{half:.2f}: {_verdict(mean['routed'], mean['simsiam'])}).")
    lines += [f"- Over the {len(diffs)} seed(s): routed - SimSiam = "
              f"{sum(diffs) / len(diffs):+.2f} points on average (the issue's goal: >= +2, "
              "beyond noise).", ""]
    for a in headline:
        tasks = a["summary"]["tasks"]
        rows = [[task] + [_cell(row["knn"][key], row["knn"]["simsiam"]) for key, _ in KNN_COLUMNS]
                for task, row in tasks.items()]
        mean = a["summary"]["mean"]["knn"]
        rows.append(["**mean**"] + [_cell(mean[key], mean["simsiam"]) for key, _ in KNN_COLUMNS])
        lines += [f"Per task, {a['arm'].name} (kNN):", ""]
        lines += _table(["task"] + [h for _, h in KNN_COLUMNS], rows) + [""]
    return lines


def _verdict(c: dict[str, Any], reference: dict[str, Any]) -> str:
    return {"~": "within noise", "+": "above, beyond noise",
            "-": "below, beyond noise"}[protocol.versus(c, reference)]


def _transfer(arms: list[dict[str, Any]], plots: dict[str, str]) -> list[str]:
    study = _by_study(arms, "negative_transfer")
    pools = [a for a in study if not _domains(a) and a["summary"]]
    domains = [a for a in study if _domains(a)]
    lines = ["## 2. Negative transfer: one pool domain vs the whole pool", "",
             "SimSiam with the same recipe and the same number of steps, pre-trained on the "
             "whole pool or on one pool domain only (`simsiam.data.domains`). Markers vs the "
             "pool run; **bold**: the domain-only model beats every pool run beyond noise.", ""]
    if not pools or not any(a["summary"] for a in domains):
        return lines + ["Not enough finished arms for this table.", ""]
    tasks = list(pools[0]["summary"]["tasks"])
    header = ["task"] + [a["arm"].name for a in pools] + \
        [",".join(_domains(a)) + " only" for a in domains]
    rows, wins = [], []
    for task in tasks + ["mean"]:
        refs = [_simsiam_cell(a, task) for a in pools]
        row = [task if task != "mean" else "**mean**"] + [_cell(c, refs[0]) for c in refs]
        for a in domains:
            c = _simsiam_cell(a, task) if a["summary"] else None
            text = _cell(c, refs[0])
            if c and all(protocol.versus(c, ref) == "+" for ref in refs):
                text = f"**{text}**"
                if task != "mean":
                    wins.append((task, ",".join(_domains(a))))
            row.append(text)
        rows.append(row)
    lines += _table(header, rows) + [""]
    if "negative_transfer" in plots:
        lines += [f"![kNN per task: pool vs one domain]({plots['negative_transfer']})", ""]
    pool_tasks = [t for t in tasks if any(t in _domains(a) for a in domains)]
    won = sorted({task for task, _ in wins})
    own = []
    for a in domains:
        for task in _domains(a):
            if a["summary"] and task in tasks:
                c, ref = _simsiam_cell(a, task), _simsiam_cell(pools[0], task)
                own.append(f"{task} {100 * (c['accuracy'] - ref['accuracy']):+.1f} "
                           f"({protocol.versus(c, ref)})")
    lines += [f"- Own domain only vs {pools[0]['arm'].name}, on the domain's own task (points, "
              f"marker): {'; '.join(own)}."]
    lines += [f"- Domain-only models that beat the whole pool beyond noise: "
              f"{', '.join(f'{domain} only on {task}' for task, domain in wins) or 'none'}.",
              f"- Pool tasks with such a model: {len(won)} of {len(pool_tasks)} (the issue's "
              "goal: >= 2 of 5).", ""]
    return lines


def _domains(a: dict[str, Any]) -> tuple[str, ...]:
    return next((tuple(value) for field, value in a["arm"].overrides
                 if field == "simsiam.data.domains"), ())


def _simsiam_cell(a: dict[str, Any], task: str) -> Optional[dict[str, Any]]:
    summary = a["summary"]
    if task == "mean":
        return summary["mean"]["knn"]["simsiam"]
    row = summary["tasks"].get(task)
    return row["knn"]["simsiam"] if row else None


def _routing(arms: list[dict[str, Any]]) -> list[str]:
    headline = [a for a in _by_study(arms, "headline") if a["summary"]]
    lines = ["## 3. Routing sanity: what the routed sub-net was trained on", "",
             "The routed path's leaf cluster and its composition by domain (from routing). A "
             "task's own domain should be the majority; emoji_twitter (not in the pool) should "
             "land on emoji.", ""]
    if not headline:
        return lines + ["No headline arm finished.", ""]
    for a in headline:
        rows, majority = [], []
        for task, row in a["summary"]["tasks"].items():
            comp = row["composition"]
            if not comp.get("available"):
                rows.append([task, _path(row["path"]), "-", "-", "-", "-"])
                continue
            shares = comp["shares"]
            top = max(shares, key=shares.get)
            own = task if comp["task_domain_in_pool"] else "emoji"
            ok = top == own
            if comp["task_domain_in_pool"]:
                majority.append(ok)
            rows.append([task, _path(row["path"]), str(comp["num_images"]),
                         f"{own} {100 * shares.get(own, 0.0):.0f}%",
                         f"{top} {100 * shares[top]:.0f}%", "yes" if ok else "no"])
        lines += [f"{a['arm'].name}:", ""]
        lines += _table(["task", "routed path", "leaf images", "own domain's share",
                         "largest domain", "own is largest"], rows)
        lines += ["", f"- Own domain the largest in the routed leaf on {sum(majority)} of "
                      f"{len(majority)} pool tasks (the issue's goal: >= 4 of 5)."]
        scores = (a["cluster"] or {}).get("scores", {}).get("leaf vs domain")
        if scores:
            lines.append(f"- The clusters themselves: leaf-vs-domain purity "
                         f"{100 * scores['purity']:.1f}%, NMI {scores['nmi']:.2f} (cluster job).")
        lines.append("")
    return lines


def _path(path: Sequence[Any]) -> str:
    return ",".join(str(x) for x in path)


def _ablations(arms: list[dict[str, Any]], reference: str) -> list[str]:
    lines = ["## 4. Ablations of SDR", "",
             f"Each arm changes one thing of `{reference}` and reuses its SimSiam run (and its "
             "clusters where the tree is the same); mean kNN over the tasks; markers vs the "
             f"same column of `{reference}`. 1 sub-net is SimSiam itself.", ""]
    ref = next((a for a in arms if a["arm"].name == reference and a["summary"]), None)
    ablations = _by_study(arms, "ablation")
    if ref is None or not ablations:
        return lines + ["Not enough finished arms for this table.", ""]
    ref_mean = ref["summary"]["mean"]["knn"]
    rows = [["SimSiam (1 sub-net)", "-", "1", _cell(ref_mean["simsiam"], ref_mean["simsiam"]),
             "-", "-", "-"]]
    for a in [ref] + ablations:
        change = a["arm"].note or ", ".join(f"{field}={value}" for field, value in
                                            a["arm"].overrides if not field.endswith("seed"))
        change = change if a is not ref else "(reference: the pipeline config as it is)"
        if a["summary"] is None:
            rows.append([a["arm"].name, change, "-",
                         "failed (diverged, see below)" if a["failed"] else "not run", "", "", ""])
            continue
        mean = a["summary"]["mean"]["knn"]
        num_paths = next(iter(a["summary"]["tasks"].values()))["num_paths"]
        rows.append([a["arm"].name, change, str(num_paths),
                     _cell(mean["simsiam"], ref_mean["simsiam"])] +
                    [_cell(mean[key], ref_mean[key]) for key in ("sdrnet", "routed", "oracle")])
    return lines + _table(["arm", "change", "sub-nets", "SimSiam", "SDRnet", "routed", "oracle"],
                          rows) + [""]


def _times(config: ConfigDict, arms: list[dict[str, Any]], workdir: str) -> list[str]:
    lines = ["## Runs: commands, wall times, machine", ""]
    records = [a["record"] for a in arms if a["record"]]
    for command in dict.fromkeys(r["command"] for r in records if r.get("command")):
        lines += [f"Run with: `{command}`", ""]
    for spec in dict.fromkeys(json.dumps(r["machine"], sort_keys=True) for r in records):
        m = json.loads(spec)
        lines += [f"Machine: {m['cpu']}, {m['cores']} cores, {m['platform']}, Python "
                  f"{m['python']}, JAX {m['jax']} ({', '.join(m['devices'])}); the cores were "
                  "shared with other jobs (load average below).", ""]
    rows = []
    for a in arms:
        record, seconds = a["record"], a["timings"]
        stages = ", ".join(f"{stage} {s:.0f}" for stage, s in seconds.items())
        total = sum(seconds.values())
        load = record["load_average"] if record else None
        state = "finished" if record else "failed" if a["failed"] else "not finished"
        rows.append([a["arm"].name, a["arm"].study, state,
                     stages or "-", f"{total / 60:.1f}" if seconds else "-",
                     f"{load['start'][0]:.1f} / {load['end'][0]:.1f}" if load else "-",
                     record["finished_at"] if record else "-", _commit(record)])
    lines += ["Wall time per arm (pipeline stages in seconds, summed over resumed runs; a shared "
              "stage costs nothing in the arm that links it):", ""]
    lines += _table(["arm", "study", "status", "stages (s)", "total (min)",
                     "load avg start / end", "finished (UTC)", "commit"], rows) + [""]
    lines += ["What makes each arm (`launch/pipeline.py` equivalent):", ""]
    lines += [f"- `{a['arm'].name}`: `{equivalent_command(config, a['arm'], workdir)}`"
              for a in arms] + [""]
    return lines


def _plots(arms: list[dict[str, Any]], out_dir: str) -> dict[str, str]:
    """Bar charts of the headline means and of the negative-transfer table (PNG)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    made = {}
    headline = [a for a in _by_study(arms, "headline") if a["summary"]]
    if headline:
        fig, ax = plt.subplots(figsize=(7, 3.5))
        width = 0.8 / len(headline)
        for i, a in enumerate(headline):
            mean = a["summary"]["mean"]["knn"]
            _bars(ax, [c for c, _ in KNN_COLUMNS], [mean[c] for c, _ in KNN_COLUMNS],
                  i * width - 0.4 + width / 2, width, a["arm"].name)
        ax.set_xticks(range(len(KNN_COLUMNS)), [h for _, h in KNN_COLUMNS])
        ax.set_ylabel("mean kNN top-1 (%)")
        made["headline"] = _save(fig, ax, out_dir, PLOT_FILES["headline"])
    study = [a for a in _by_study(arms, "negative_transfer") if a["summary"]]
    pools = [a for a in study if not _domains(a)][:1]
    domains = [a for a in study if _domains(a)]
    if pools and domains:
        tasks = list(pools[0]["summary"]["tasks"])
        groups = pools + domains
        fig, ax = plt.subplots(figsize=(9, 3.5))
        width = 0.8 / len(groups)
        for i, a in enumerate(groups):
            label = "pool" if a is pools[0] else ",".join(_domains(a)) + " only"
            _bars(ax, tasks, [_simsiam_cell(a, t) for t in tasks], i * width - 0.4 + width / 2,
                  width, label)
        ax.set_xticks(range(len(tasks)), tasks)
        ax.set_ylabel("SimSiam kNN top-1 (%)")
        made["negative_transfer"] = _save(fig, ax, out_dir, PLOT_FILES["negative_transfer"])
    return made


def _bars(ax, keys, cells, offset, width, label) -> None:
    xs = [i + offset for i, c in enumerate(cells) if c]
    values = [100 * c["accuracy"] for c in cells if c]
    errors = [[100 * (c["accuracy"] - c["low"]) for c in cells if c],
              [100 * (c["high"] - c["accuracy"]) for c in cells if c]]
    ax.bar(xs, values, width, yerr=errors, capsize=2, label=label)


def _save(fig, ax, out_dir: str, name: str) -> str:
    ax.legend(fontsize=7, ncol=2)
    ax.set_ylim(bottom=30)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, name), dpi=110)
    import matplotlib.pyplot as plt
    plt.close(fig)
    return name


# -- files -------------------------------------------------------------------------------------

def _write_json(path: str, data: Any) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    io.write_json(path, data)
