"""Orbax checkpoints in the workdir: train state + input-pipeline state, automatic resume.

A workdir belongs to one model: its config is recorded in `config.json` at the first start, and a
restart with another model config is refused before anything is read or written.

Every reader of a run (training's resume, `load_run` for clustering, routing, evaluation) restores
the latest *intact* checkpoint: a damaged one (a truncated file, a missing `_METADATA`, non-finite
values) gets a one-line warning and the previous one is tried.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import socket
import sys
import time
from typing import Any, Callable, Iterator, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from ml_collections import ConfigDict

from sdr_jax.core import io
from sdr_jax.core.errors import CheckpointError

CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"
DAMAGED_DIR = "checkpoints_damaged"  # where a resuming run moves damaged checkpoints (kept)
T = TypeVar("T")


# Fields a resumed run may change freely: where files are and how often it reports, nothing that
# changes the trajectory of the params (a resumed run continues the same run, or says it does not).
FREE_FIELDS = ("train.log_every", "train.checkpoint_every", "train.keep_checkpoints",
               "train.max_steps_per_run", "train.knn_every", "train.allow_config_change",
               "data.data_dir", "eval.")
HISTORY_FILE = "config_history.jsonl"
LOCK_FILE = "lock"


@contextlib.contextmanager
def workdir_lock(workdir: str) -> Iterator[None]:
    """One writer per workdir: two runs on one (a duplicated job, a second terminal) would
    interleave their checkpoints and metrics. A lock left by a killed run (its pid gone on this
    host) is taken over. Local filesystems only (an object store has no atomic create)."""
    if jax.process_index() != 0 or "://" in str(workdir):
        yield
        return
    root = epath.Path(workdir)
    root.mkdir(parents=True, exist_ok=True)
    path = os.fspath(root / LOCK_FILE)
    me = {"pid": os.getpid(), "host": socket.gethostname()}
    # Written aside then hard-linked: the lock appears atomically, already holding its owner.
    mine = f"{path}.{me['pid']}"
    with open(mine, "w") as f:
        json.dump(me, f)
    try:
        while True:
            try:
                os.link(mine, path)
                break
            except FileExistsError:
                holder = _lock_holder(path)
                if holder is not None and not io.is_dead(holder):
                    raise CheckpointError(
                        f"workdir {workdir} is in use by process {holder['pid']} on "
                        f"{holder['host']}; wait for it, or delete {path} if it is gone.") from None
                print(f"warning: taking over the lock of a dead run ({holder}) in {workdir}.",
                      file=sys.stderr, flush=True)
                with contextlib.suppress(FileNotFoundError):
                    os.remove(path)
    finally:
        os.remove(mine)
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


def _lock_holder(path: str) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def check_workdir_config(workdir: str, config: ConfigDict) -> None:
    """Records `config` in the workdir, or checks it field by field against the recorded one.

    Another model is refused once a checkpoint exists (it would not fit). Another value of a field
    that changes the trajectory (lr, batch size, seed, steps, the SDR assignments, ...) is refused
    with the fields named, unless `train.allow_config_change`; accepted changes update
    `config.json` and are appended to `config_history.jsonl`, so the workdir tells the truth.
    """
    path = epath.Path(workdir) / CONFIG_FILE
    current = json.loads(config.to_json_best_effort())
    if not path.exists():
        _write_json(path, current)
        return
    recorded = json.loads(path.read_text())
    checkpoints = epath.Path(workdir) / CHECKPOINT_DIR
    resumes = checkpoints.exists() and any(p.name.isdigit() for p in checkpoints.iterdir())
    if recorded.get("model") != current.get("model") and resumes:
        raise CheckpointError(
            f"workdir {workdir} holds a run with another 'model' config "
            f"({_first_difference(recorded.get('model'), current.get('model'))}); "
            f"use a new --workdir or the config that made it.")
    methods = [m.get("name") if isinstance(m, dict) else m  # a name before methods had fields
               for m in (recorded.get("method"), current.get("method"))]
    if methods[0] != methods[1] and resumes:  # another method state: it would not fit either
        raise CheckpointError(f"workdir {workdir} holds a run of method {methods[0]!r}, not "
                              f"{methods[1]!r}; use a new --workdir or the config that made it.")
    changes = changed_fields(recorded, current)
    if not changes:
        return
    # Without a checkpoint (a run stopped before its first) nothing is continued: any change goes.
    trajectory = {k: v for k, v in changes.items() if not k.startswith(FREE_FIELDS)} \
        if resumes else {}
    allowed = current.get("train", {}).get("allow_config_change", False)
    if trajectory and not allowed:
        named = "; ".join(f"{k}: {old!r} in the workdir, {new!r} now"
                          for k, (old, new) in trajectory.items())
        raise CheckpointError(
            f"workdir {workdir} holds a run with other settings ({named}); rerun with the "
            f"recorded values, a new --workdir, or --config.train.allow_config_change=True to "
            f"continue it with these (recorded in {HISTORY_FILE}).")
    if jax.process_index() == 0:
        io.append_line(epath.Path(workdir) / HISTORY_FILE, json.dumps({
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "override": bool(trajectory),
            "changed": {k: {"was": old, "now": new} for k, (old, new) in changes.items()},
        }))
        _write_json(path, current)


def _write_json(path: epath.Path, value: Any) -> None:
    io.write_json(path, value, indent=2, sort_keys=True)


def changed_fields(a: Any, b: Any, prefix: str = "") -> dict[str, tuple[Any, Any]]:
    """{'section.field': (value in a, value in b)} for every leaf that differs."""
    if isinstance(a, dict) and isinstance(b, dict):
        changes = {}
        for key in sorted(set(a) | set(b)):
            changes.update(changed_fields(a.get(key), b.get(key), f"{prefix}{key}."))
        return changes
    return {} if a == b else {prefix.rstrip("."): (a, b)}


def _first_difference(a: Any, b: Any, prefix: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                return _first_difference(a.get(key), b.get(key), f"{prefix}{key}.")
    return f"{prefix.rstrip('.') or 'value'}: {a!r} in the workdir, {b!r} now"


@jax.jit
def _finite_parts(state: Any) -> dict[str, jax.Array]:
    """{field of the state: all its float entries are finite}, one reduction per field."""
    def finite(tree):
        flags = [jnp.isfinite(x).all() for x in jax.tree.leaves(tree)
                 if jnp.issubdtype(x.dtype, jnp.inexact)]
        return jnp.stack(flags).all() if flags else jnp.asarray(True)
    fields = ({f.name: getattr(state, f.name) for f in dataclasses.fields(state)}
              if dataclasses.is_dataclass(state) else dict(state))
    return {name: finite(value) for name, value in fields.items()}


def non_finite_parts(state: Any) -> list[str]:
    """The fields of `state` (params, batch_stats, opt_state, ...) holding a NaN or inf."""
    # The state is replicated: any local shard holds the whole answer (also on multi-host meshes).
    flags = jax.tree.map(lambda x: bool(np.asarray(x.addressable_data(0))), _finite_parts(state))
    return [name for name, ok in flags.items() if not ok]


def _reason(error: BaseException) -> str:
    # TensorStore appends its whole spec to the first line; the part before says what failed.
    text = str(error).strip().split(" See full TensorStore details")[0]
    return text.splitlines()[0][:160] if text else type(error).__name__


def restore_latest_intact(directory: epath.Path, steps: list[int], restore_step: Callable[[int], T],
                          *, then: str) -> tuple[int, T, list[int]]:
    """(step, restore_step(step), damaged steps) for the latest step that restores.

    Damage takes many forms (tensorstore read errors, a missing file, JSON errors, non-finite
    values), so any exception of a step counts: the damaged steps and why are named in one
    warning line (ending with `then`, what the caller does about it), and when no step restores
    one CheckpointError lists them all.
    """
    damaged = []
    for step in sorted(steps, reverse=True):
        try:
            restored = restore_step(step)
        except Exception as e:  # noqa: BLE001 -- see above; the reason is reported, not hidden
            damaged.append((step, _reason(e)))
            continue
        if damaged and jax.process_index() == 0:
            print(f"warning: damaged checkpoint in {directory} ({_describe(damaged)}); using step "
                  f"{step}{then}.", file=sys.stderr, flush=True)
        return step, restored, [s for s, _ in damaged]
    raise CheckpointError(f"no intact checkpoint in {directory} ({_describe(damaged)}); use a new "
                          f"--workdir, or restore the files.")


def _describe(damaged: list[tuple[int, str]]) -> str:
    return "; ".join(f"step {step}: {reason}" for step, reason in damaged)


def _finite_or_raise(state: Any) -> Any:
    bad = non_finite_parts(state)
    if bad:
        raise ValueError(f"non-finite values in {', '.join(bad)}")
    return state


class Checkpointer:
    """Saves and restores {'state': pytree, 'data': JSON-able input-pipeline state}."""

    def __init__(self, workdir: str, *, max_to_keep: int = 3):
        self.directory = epath.Path(workdir).absolute() / CHECKPOINT_DIR
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
            item_names=("state", "data"))

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def restore(self, abstract_state: Any) -> tuple[Any, Any] | None:
        """The latest intact (state, data_state), or None when the workdir has no checkpoint.

        Damaged later checkpoints are moved to WORKDIR/checkpoints_damaged (kept for a look),
        so that the resumed run can write those steps again.
        """
        steps = self._manager.all_steps()
        if not steps:
            return None

        def restore_step(step):
            restored = self._manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
            return _finite_or_raise(restored["state"]), restored["data"]

        aside = self.directory.parent / DAMAGED_DIR
        _, restored, damaged = restore_latest_intact(
            self.directory, steps, restore_step, then=f" (the damaged ones move to {aside})")
        if damaged:
            self._move_aside(damaged, aside)
        return restored

    def _move_aside(self, steps: list[int], aside: epath.Path) -> None:
        if jax.process_index() == 0:
            aside.mkdir(parents=True, exist_ok=True)
            for step in steps:
                target = aside / str(step)
                if target.exists():
                    target = aside / f"{step}.{int(time.time())}"
                (self.directory / str(step)).rename(target)
        # Other hosts must not look before the move is done (shared storage).
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            multihost_utils.sync_global_devices("checkpoint_move_aside")
        self._manager.reload()

    def save(self, step: int, state: Any, data_state: Any, *, force: bool = False) -> None:
        self._manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)), force=force)

    def reached_preemption(self, step: int) -> bool:
        return self._manager.reached_preemption(step)

    def wait_until_finished(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()



def load_run(workdir: str, step: int | None = None) -> tuple[ConfigDict, dict, int]:
    """(config, {'params', 'batch_stats'}, step) of a training run's latest (or given) checkpoint.

    Reads only what inference needs: no optimiser or model has to be rebuilt to restore it.
    """
    root = epath.Path(workdir)
    config_path = root / CONFIG_FILE
    if not config_path.exists():
        raise CheckpointError(f"{workdir} is not a training workdir (no {CONFIG_FILE}); pass the "
                              f"--workdir of a finished launch/train.py run.")
    config = ConfigDict(json.loads(config_path.read_text()))
    # Not read_only=True: that logs two warnings on every load (noise around the one-line
    # errors of launch scripts); a manager that never saves writes nothing either way.
    manager = ocp.CheckpointManager(
        root.absolute() / CHECKPOINT_DIR, item_names=("state", "data"),
        item_handlers={"state": ocp.StandardCheckpointHandler(),
                       "data": ocp.JsonCheckpointHandler()},
        options=ocp.CheckpointManagerOptions(create=False))
    steps = manager.all_steps() if step is None else [step]
    if not steps or steps[0] not in manager.all_steps():
        raise CheckpointError(f"{workdir} has no checkpoint{'' if step is None else f' {step}'}; "
                              f"train first (launch/train.py --workdir={workdir}).")
    # Restore against the saved shapes placed on this process's first device, so a run saved on
    # one topology (8 accelerators, a pod) loads on any other (a laptop CPU).
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

    def restore_step(step):
        target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                              manager.item_metadata(step)["state"])
        state = manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target)))["state"]
        return _finite_or_raise({"params": state["params"], "batch_stats": state["batch_stats"]})

    try:
        step, variables, _ = restore_latest_intact(manager.directory, steps, restore_step,
                                                   then="")
    finally:
        manager.close()
    return config, variables, step
