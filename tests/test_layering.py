"""The package's floors: a module imports only from its own package, `core` or lower floors.

  1 core, config_base   paths and layouts, errors, the device mesh, storage; config helpers
  2 models              backbones, batch norm, heads, export of sub-nets
  3 data, methods       datasets, input pipelines, assignments | SSL methods and distillation
  4 eval                feature extraction, kNN, linear probe, the evaluation protocol
  5 train               the step skeleton, state, optimiser, checkpoints, loop, trainers
  6 jobs                clustering, routing, evaluation, the pipeline stage runner

Checked on the source (every `import`/`from ... import` in sdr_jax/, including function-local
ones), so an upward import fails here before it becomes a cycle.
"""
import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1] / "sdr_jax"
FLOORS = {"core": 1, "config_base": 1, "models": 2, "data": 3, "methods": 3, "eval": 4,
          "train": 5, "jobs": 6}


def _package(module: str) -> str:
    """'sdr_jax.data.assignments' -> 'data'."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _imports(path: pathlib.Path, module: str):
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.startswith("sdr_jax"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "sdr_jax":  # from sdr_jax import models
                yield from (f"sdr_jax.{a.name}" for a in node.names)
            elif node.module.startswith("sdr_jax."):
                yield node.module


def _modules():
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        yield path, ".".join(rel.parts)


def test_every_package_has_a_floor():
    packages = {_package(module) for _, module in _modules()} - {"__init__", ""}
    assert packages <= set(FLOORS), f"packages without a floor: {packages - set(FLOORS)}"


@pytest.mark.parametrize("path,module", list(_modules()), ids=lambda x: str(x))
def test_imports_point_down(path, module):
    own = _package(module)
    if own not in FLOORS:
        return
    upward = [imported for imported in _imports(path, module)
              if _package(imported) not in (own, "core")
              and FLOORS.get(_package(imported), 0) >= FLOORS[own]]
    assert not upward, f"{module} (floor {FLOORS[own]}) imports {upward}"
