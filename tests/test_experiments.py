"""launch/experiments.py at :tiny end to end: arms run on mosaic/small, the report is made from
the run directories, a second run skips the finished arms. No accuracy level is asserted."""
import json
import os
import subprocess
import sys

import pytest

from sdr_jax.jobs import experiments
from sdr_jax.config_base import load_config_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(data_dir):
    config = load_config_file("configs/experiments_mosaic.py:tiny")
    config.data_dir = data_dir
    return config


def test_runs_reports_and_resumes(small_mosaic_dir, tmp_path):
    config = tiny_config(small_mosaic_dir)
    workdir, report = str(tmp_path / "exp"), str(tmp_path / "docs" / "RESULTS.md")
    names = [arm.name for arm in config.arms]
    assert names == ["sdr_seed0", "simsiam_pool", "simsiam_mnist", "ablation_no_progressive"]

    status = experiments.run(config, workdir, report=report, command="pytest")
    assert status == {name: "finished" for name in names}
    # The SimSiam-only arm trained on mnist's pool images only.
    with open(os.path.join(workdir, "simsiam_mnist", "simsiam", "config.json")) as f:
        assert json.load(f)["data"]["domains"] == ["mnist"]
    # The ablation reused seed 0's SimSiam run and clusters, and trained its own SDRnet.
    ablation = os.path.join(workdir, "ablation_no_progressive")
    assert os.path.islink(os.path.join(ablation, "simsiam"))
    assert os.path.islink(os.path.join(ablation, "cluster"))
    assert not os.path.islink(os.path.join(ablation, "sdr"))
    record = json.load(open(os.path.join(ablation, "arm.json")))
    assert record["command"] == "pytest" and record["machine"]["cores"] >= 1
    # The code that ran: the checkout's commit (None only outside a git checkout).
    assert record["code"] == experiments.code_version()
    assert record["code"] is None or len(record["code"]["commit"]) == 40

    text = open(report).read()
    for heading in ("## 1. SDR vs SimSiam", "## 2. Negative transfer", "## 3. Routing sanity",
                    "## 4. Ablations", "## Runs: commands, wall times, machine"):
        assert heading in text
    assert "| mnist |" in text and "mnist only" in text and "ablation_no_progressive" in text
    assert "Not run" not in text  # every arm finished

    # Resume: nothing runs again; --report_only makes the same tables from the directories.
    assert experiments.run(config, workdir, report=report) == {n: "skipped" for n in names}
    again = experiments.write_report(config, workdir, str(tmp_path / "again.md"))
    assert again == text


def test_unfinished_arms_are_listed_and_bad_input_is_one_line(small_mosaic_dir, tmp_path):
    config = tiny_config(small_mosaic_dir)
    text = experiments.write_report(config, str(tmp_path / "empty"), str(tmp_path / "R.md"))
    assert "0 of 4 arms finished" in text
    assert "sdr_seed0, simsiam_pool, simsiam_mnist, ablation_no_progressive" in text
    with pytest.raises(experiments.ExperimentError, match="unknown arm 'nope'"):
        experiments.run(config, str(tmp_path / "x"), arms=["nope"])
    config.arms[0].overrides = (("simsiam.no_such_field", 1),)
    with pytest.raises(experiments.ExperimentError, match="cannot set simsiam.no_such_field"):
        experiments.run(config, str(tmp_path / "x"))
    result = subprocess.run(
        [sys.executable, "launch/experiments.py", "--config=configs/experiments_mosaic.py:tiny",
         f"--workdir={tmp_path / 'y'}", "--arms=nope"],
        cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ROOT})
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: unknown arm 'nope'")


def test_configs_are_inert_and_variants_checked():
    code = ("import sys; from sdr_jax.config_base import load_config_file as l; "
            "[l('configs/experiments_mosaic.py' + v) for v in ('', ':tiny', ':long')]; "
            "print('tensorflow_datasets' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": ROOT})
    assert out.stdout.strip() == "False", out.stderr
    for variant in ("", "tiny", "long"):
        config = load_config_file(f"configs/experiments_mosaic.py:{variant}")
        experiments.check_config(config)
        for arm in config.arms:  # every override names a real field
            experiments.arm_config(config, arm)
    with pytest.raises(ValueError, match="unknown config variant"):
        load_config_file("configs/experiments_mosaic.py:huge")


def test_restrict_to_domains(small_mosaic_dir):
    from sdr_jax.data import datasets
    from sdr_jax.data.sources import DataError
    pool = datasets.open_source("mosaic/small", "pool", small_mosaic_dir)
    mnist = datasets.restrict_to_domains(pool, ("mnist",))
    records = mnist.__getitems__(list(range(len(mnist))))
    assert 0 < len(mnist) < len(pool)
    assert {r["domain"] for r in records} == {1}  # mosaic.DOMAIN_NAMES.index("mnist")
    assert len(mnist) == sum(r["domain"] == 1 for r in pool.__getitems__(range(len(pool))))
    with pytest.raises(DataError, match="unknown mosaic domain"):
        datasets.restrict_to_domains(pool, ("mnsit",))


def test_a_diverged_arm_is_recorded_and_the_next_runs(tmp_path, monkeypatch):
    from sdr_jax.core.errors import NonFiniteLossError
    config = load_config_file("configs/experiments_mosaic.py:tiny")
    ran = []

    def fake_run_arm(config, arm, workdir, command):
        ran.append(arm.name)
        if arm.name == "simsiam_pool":
            raise NonFiniteLossError("non-finite training metrics by step 50 (loss=nan)")
        return "skipped"

    monkeypatch.setattr(experiments, "run_arm", fake_run_arm)
    report = str(tmp_path / "R.md")
    status = experiments.run(config, str(tmp_path / "exp"), report=report)
    assert ran == [arm.name for arm in config.arms]
    assert status["simsiam_pool"] == "failed"
    text = open(report).read()
    assert "## Failed" in text and "simsiam_pool" in text and "loss=nan" in text
