"""Draws a run's logged curves (every loss term, every collapse indicator) into a PNG.

  python launch/plot_metrics.py --workdir=runs/sdr [--out=runs/sdr/curves.png]
"""
import sys

from absl import app, flags

from sdr_jax.jobs import cli
from sdr_jax.train import reporting

_WORKDIR = flags.DEFINE_string("workdir", None, "Workdir of a training run.", required=True)
_OUT = flags.DEFINE_string("out", None, "PNG to write (default: WORKDIR/curves.png).")


def main(argv):
    del argv
    out = _OUT.value or f"{_WORKDIR.value}/curves.png"
    try:
        keys = reporting.plot_metrics(_WORKDIR.value, out)
    except FileNotFoundError as e:
        cli.fail(str(e))
    print(f"wrote {out}: {', '.join(keys)}")


if __name__ == "__main__":
    sys.exit(app.run(main))
