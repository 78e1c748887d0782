"""Orbax checkpoints in the workdir: train state + input-pipeline state, automatic resume.

A workdir belongs to one model: its config is recorded in `config.json` at the first start, and a
restart with another model config is refused before anything is read or written.
"""
from __future__ import annotations

import json
import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath
from ml_collections import ConfigDict

from sdr_jax.errors import CheckpointError

CONFIG_FILE = "config.json"


def check_workdir_config(workdir: str, config: ConfigDict, *, keys: tuple[str, ...] = ("model",)) -> None:
    """Records `config` in the workdir, or checks that the recorded one agrees on `keys`."""
    path = epath.Path(workdir) / CONFIG_FILE
    current = json.loads(config.to_json_best_effort())
    if path.exists():
        recorded = json.loads(path.read_text())
        for key in keys:
            if recorded.get(key) != current.get(key):
                raise CheckpointError(
                    f"workdir {workdir} holds a run with another '{key}' config "
                    f"({_first_difference(recorded.get(key), current.get(key))}); "
                    f"use a new --workdir or the config that made it.")
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / (CONFIG_FILE + ".tmp")
    tmp.write_text(json.dumps(current, indent=2, sort_keys=True))
    os.replace(tmp, path)


def _first_difference(a: Any, b: Any, prefix: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                return _first_difference(a.get(key), b.get(key), f"{prefix}{key}.")
    return f"{prefix.rstrip('.') or 'value'}: {a!r} in the workdir, {b!r} now"


class Checkpointer:
    """Saves and restores {'state': pytree, 'data': JSON-able input-pipeline state}."""

    def __init__(self, workdir: str, *, max_to_keep: int = 3):
        self.directory = epath.Path(workdir).absolute() / "checkpoints"
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
            item_names=("state", "data"))

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def restore(self, abstract_state: Any) -> tuple[Any, Any] | None:
        """The latest (state, data_state), or None when the workdir has no checkpoint yet."""
        step = self._manager.latest_step()
        if step is None:
            return None
        try:
            restored = self._manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
        except (ValueError, TypeError, KeyError) as e:
            raise CheckpointError(
                f"checkpoint {self.directory}/{step} does not fit this model "
                f"({str(e).splitlines()[0][:200]}); use a new --workdir.") from e
        return restored["state"], restored["data"]

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
        root.absolute() / "checkpoints", item_names=("state", "data"),
        item_handlers={"state": ocp.StandardCheckpointHandler(),
                       "data": ocp.JsonCheckpointHandler()},
        options=ocp.CheckpointManagerOptions(create=False))
    step = manager.latest_step() if step is None else step
    if step is None or step not in manager.all_steps():
        raise CheckpointError(f"{workdir} has no checkpoint{'' if step is None else f' {step}'}; "
                              f"train first (launch/train.py --workdir={workdir}).")
    # Restore against the saved shapes placed on this process's first device, so a run saved on
    # one topology (8 accelerators, a pod) loads on any other (a laptop CPU).
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                          manager.item_metadata(step)["state"])
    state = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target)))["state"]
    manager.close()
    return config, {"params": state["params"], "batch_stats": state["batch_stats"]}, step
