"""The training loop shared by SimSiam and SDR: logging, NaN checks, checkpoints, monitors.

Metrics stay on device and are merged asynchronously; the host reads them only on log and
checkpoint steps, so a step never waits for the previous one.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import jax
import numpy as np
from ml_collections import ConfigDict

from sdr_jax.errors import NonFiniteLossError
from sdr_jax.train import reporting
from sdr_jax.train.checkpoint import Checkpointer


@dataclasses.dataclass
class LoopResult:
    state: Any
    finished: bool  # False when stopped early (max_steps_per_run or preemption) with a checkpoint


def check_finite(metrics: Mapping[str, float], step: int, checkpointer: Checkpointer) -> None:
    if all(np.isfinite(v) for v in metrics.values()):
        return
    last = checkpointer.latest_step()
    kept = f"the last good checkpoint (step {last}) is kept" if last is not None else \
        "no checkpoint was written"
    bad = ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if not np.isfinite(v))
    raise NonFiniteLossError(f"non-finite training metrics by step {step} ({bad}); {kept}; "
                             f"lower optim.base_lr or check the data.")


def run(*, state: Any, first_step: int, num_steps: int, train_cfg: ConfigDict,
        step_fn: Callable[[Any, int], tuple[Any, Any]],
        data_state: Callable[[], Any],
        checkpointer: Checkpointer, writer: reporting.MetricWriter,
        log_extras: Callable[[int], Mapping[str, float]] = lambda step: {},
        monitor: Callable[[Any, int], Mapping[str, float]] | None = None) -> LoopResult:
    """Runs steps first_step+1..num_steps.

    `step_fn(state, step)` fetches its batch and runs the jitted step, returning the new state and
    a clu metrics Collection; `data_state()` is the input pipeline's state after the last batch;
    `monitor(state, step)` (e.g. kNN accuracies) runs every `train_cfg.knn_every` steps.
    """
    is_lead = jax.process_index() == 0
    progress = reporting.Progress(first_step, num_steps)
    accumulated = None
    for step in range(first_step + 1, num_steps + 1):
        state, metrics = step_fn(state, step)
        accumulated = metrics if accumulated is None else accumulated.merge(metrics)
        is_last = step == num_steps
        pause = 0 < train_cfg.max_steps_per_run <= step - first_step
        preempted = checkpointer.reached_preemption(step)
        should_log = step % train_cfg.log_every == 0 or is_last
        should_save = step % train_cfg.checkpoint_every == 0 or is_last or pause or preempted
        if should_log or should_save:
            values = {k: float(v) for k, v in accumulated.compute().items()}
            accumulated = None
            check_finite(values, step, checkpointer)  # before anything bad can be saved
            if should_log:
                values.update(log_extras(step))
                values.update(progress.update(step))
                writer.write_scalars(step, values)
                if is_lead:
                    print(reporting.format_metrics(step, num_steps, values), flush=True)
        if should_save:
            checkpointer.save(step, state, data_state(), force=True)
        if pause or preempted:
            why = "preempted" if preempted else "max_steps_per_run"
            print(f"Stopped at step {step} ({why}); checkpoint saved, run again to resume.",
                  flush=True)
            return LoopResult(state, finished=False)
        if monitor and train_cfg.knn_every and step % train_cfg.knn_every == 0 and not is_last:
            results = monitor(state, step)
            writer.write_scalars(step, results)
            if is_lead:
                print(f"step {step}: " + ", ".join(f"{k} {v:.4g}" for k, v in results.items()),
                      flush=True)
    return LoopResult(state, finished=True)
