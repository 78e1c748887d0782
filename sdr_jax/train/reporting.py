"""Progress lines and metric files.

clu's metric writers import TensorFlow, which sdr_jax does not need, so scalars go to
`metrics.jsonl` (one JSON object per logged step, easy to plot) and to TensorBoard event files
written with the `tensorboard` package alone (no TensorFlow).
"""
from __future__ import annotations

import json
import math
import time
from typing import Mapping

from etils import epath

from sdr_jax.core import io


class MetricWriter:
    """Writes scalars to `<workdir>/metrics.jsonl` and TensorBoard events in `<workdir>/tb`."""

    def __init__(self, workdir: str, *, enabled: bool = True):
        self._enabled = enabled
        self._jsonl = None
        self._events = None
        if not enabled:
            return
        workdir = epath.Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        path = workdir / "metrics.jsonl"
        # A run killed mid-write leaves a partial last row: start a new line after it.
        torn = False
        if path.exists() and path.stat().length:
            with path.open("rb") as f:
                f.seek(-1, 2)
                torn = f.read(1) != b"\n"
        self._jsonl = open(path, "a")
        if torn:
            self._jsonl.write("\n")
        try:
            from tensorboard.summary.writer.event_file_writer import EventFileWriter
        except ImportError:  # TensorBoard is optional: the JSONL file has everything.
            return
        self._events = EventFileWriter(str(workdir / "tb"))

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        if not self._enabled:
            return
        scalars = {k: float(v) for k, v in scalars.items()}
        self._jsonl.write(json.dumps({"step": int(step), **scalars}) + "\n")
        self._jsonl.flush()
        if self._events is not None:
            from tensorboard.compat.proto import event_pb2, summary_pb2
            summary = summary_pb2.Summary(value=[
                summary_pb2.Summary.Value(tag=k, simple_value=v) for k, v in scalars.items()])
            self._events.add_event(event_pb2.Event(step=int(step), wall_time=time.time(),
                                                   summary=summary))
            self._events.flush()

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
        if self._events is not None:
            self._events.close()


def read_metrics(workdir: str) -> list[dict]:
    """All logged rows of a workdir's metrics.jsonl (later rows win on restarts)."""
    rows = {}
    # io.read_jsonl skips the half-written last row of a killed run (the writer starts a new line)
    for row in io.read_jsonl(epath.Path(workdir) / "metrics.jsonl"):
        rows.setdefault(row["step"], {}).update(row)
    return [rows[s] for s in sorted(rows)]


class Progress:
    """Steps/s and ETA between log lines."""

    def __init__(self, first_step: int, num_steps: int):
        self._num_steps = num_steps
        self._last_step = first_step
        self._last_time = time.perf_counter()

    def update(self, step: int) -> dict[str, float]:
        now = time.perf_counter()
        rate = (step - self._last_step) / max(now - self._last_time, 1e-9)
        self._last_step, self._last_time = step, now
        eta = (self._num_steps - step) / rate if rate > 0 else math.inf
        return {"steps_per_sec": rate, "eta_sec": eta}


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def format_metrics(step: int, num_steps: int, metrics: Mapping[str, float]) -> str:
    parts = [f"step {step}/{num_steps}"]
    for key, value in metrics.items():
        if key == "eta_sec":
            parts.append(f"eta {format_duration(value)}")
        elif key == "steps_per_sec":
            parts.append(f"{value:.2f} steps/s")
        else:
            parts.append(f"{key} {value:.4g}")
    return " | ".join(parts)


def plot_metrics(workdir: str, out: str, prefixes: tuple[str, ...] = ("loss", "collapse_std")
                 ) -> list[str]:
    """Plots a run's logged curves, one panel per prefix (e.g. every `loss*` term together);
    returns the keys drawn."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(workdir)
    if not rows:
        raise FileNotFoundError(f"{workdir} has no metrics.jsonl; train first.")
    keys = sorted({k for row in rows for k in row if k.startswith(prefixes)})
    fig, axes = plt.subplots(1, len(prefixes), figsize=(6 * len(prefixes), 4), squeeze=False)
    for ax, prefix in zip(axes[0], prefixes):
        for key in (k for k in keys if k.startswith(prefix)):
            # Progressive stage 0 trains no sub-net: its sub-net/KD terms are placeholders.
            subnet_term = "subnet" in key or "kd" in key
            points = [(row["step"], row[key]) for row in rows
                      if key in row and not (subnet_term and row.get("stage") == 0)]
            if not points:
                continue
            ax.plot(*zip(*points), label=key)
        if "stage" in rows[-1]:  # progressive stage boundaries
            stages = [(row["step"], row["stage"]) for row in rows if "stage" in row]
            for (_, before), (step, after) in zip(stages, stages[1:]):
                if after != before:
                    ax.axvline(step, color="grey", lw=0.5, ls="--")
        ax.set_xlabel("step")
        ax.set_title(prefix)
        ax.legend(fontsize=7)
    fig.tight_layout()
    io.write_figure(out, fig, dpi=100)
    plt.close(fig)
    return keys
