"""The Colab demos execute without error (nbclient, tiny configs, the small fake pool).

Both share one workdir: the routing demo runs first on an empty one, so it trains its tiny
SDRnet (SimSiam -> clustering -> SDR) itself; the pipeline demo then finishes that run
(skipping the trained stages) and shows the summary and the pictures.
"""
import base64
import json
import os

import nbclient
import nbformat
import pytest

pytestmark = pytest.mark.slow  # every test here runs a tiny run or a notebook

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = os.path.join(ROOT, "notebooks")


@pytest.fixture(scope="module")
def demo_env(small_mosaic_dir, tmp_path_factory):
    env = {"SDR_DEMO_TINY": "1", "SDR_DEMO_DATA_DIR": small_mosaic_dir,
           "SDR_DEMO_WORKDIR": str(tmp_path_factory.mktemp("demo") / "run"),
           # The kernel imports this checkout's sdr_jax (not another installed copy).
           "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)  # the kernel inherits the environment
    yield env
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def execute(name: str):
    notebook = nbformat.read(os.path.join(NOTEBOOKS, name), as_version=4)
    nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": ROOT}}).execute()
    return notebook


def _outputs(notebook, kind):
    return [output for cell in notebook.cells if cell.cell_type == "code"
            for output in cell.outputs if kind in output.get("data", {})]


def _text(notebook):
    return "".join(output.get("text", "") for cell in notebook.cells
                   if cell.cell_type == "code" for output in cell.outputs)


def test_route_demo_trains_a_tiny_sdrnet_then_routes(demo_env):
    assert not os.path.exists(demo_env["SDR_DEMO_WORKDIR"])
    notebook = execute("route_demo.ipynb")
    text = _text(notebook)
    assert "training a tiny SDRnet first" in text
    assert "routed sub-net: kNN" in text and "SDRnet:         kNN" in text
    ranking_file = os.path.join(demo_env["SDR_DEMO_WORKDIR"], "sdr", "route", "mnist",
                                "ranking.json")
    with open(ranking_file) as f:
        assert len(json.load(f)["paths"]) == 16
    pictures = _outputs(notebook, "image/png")
    assert len(pictures) == 2  # the histogram file and the per-path bar chart
    assert all(base64.b64decode(p["data"]["image/png"])[:4] == b"\x89PNG" for p in pictures)


def test_pipeline_demo_finishes_the_run_and_shows_pictures(demo_env):
    notebook = execute("pipeline_demo.ipynb")
    text = _text(notebook)
    with open(os.path.join(demo_env["SDR_DEMO_WORKDIR"], "summary.json")) as f:
        summary = json.load(f)
    assert list(summary["tasks"]) == ["mnist", "emoji_twitter"]
    assert "wall time per stage" in text and "emoji_twitter" in text
    # The bar chart, the cluster grid and one route histogram per task, inline.
    assert len(_outputs(notebook, "image/png")) == 1 + 1 + len(summary["tasks"])
