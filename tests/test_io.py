"""sdr_jax.core.io: round trips, and atomicity (a failed or killed write leaves the old file)."""
import json
import os
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest

from sdr_jax.core import io

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_round_trips(tmp_path):
    value = {"a": [1, 2.5, None], "b": {"c": "d"}}
    io.write_json(tmp_path / "deep" / "x.json", value)  # parents are made
    assert io.read_json(tmp_path / "deep" / "x.json") == value
    assert io.read_json(tmp_path / "missing.json") is None
    assert io.read_json(tmp_path / "missing.json", default={}) == {}

    io.write_text(str(tmp_path / "t.txt"), "héllo\n")
    assert io.read_text(tmp_path / "t.txt") == "héllo\n"
    io.write_bytes(tmp_path / "b.bin", b"\x00\x01")
    assert io.read_bytes(tmp_path / "b.bin") == b"\x00\x01"

    arrays = {"ids": np.arange(5, dtype=np.int64), "x": np.random.rand(3, 4).astype(np.float32),
              "meta": np.array(json.dumps({"k": 1}))}
    io.write_npz(tmp_path / "a.npz", arrays)
    back = io.read_npz(tmp_path / "a.npz")
    assert set(back) == set(arrays)
    for key in arrays:
        np.testing.assert_array_equal(back[key], arrays[key])
        assert back[key].dtype == arrays[key].dtype
    io.write_npy(tmp_path / "a.npy", arrays["x"])
    np.testing.assert_array_equal(io.read_npy(tmp_path / "a.npy"), arrays["x"])

    image = np.random.default_rng(0).integers(0, 256, (7, 5, 3), dtype=np.uint8)
    io.write_image(tmp_path / "i.png", image)
    np.testing.assert_array_equal(io.read_image(tmp_path / "i.png"), image)
    io.write_image(tmp_path / "j.png", io.read_bytes(tmp_path / "i.png"))  # encoded bytes
    np.testing.assert_array_equal(io.read_image(tmp_path / "j.png"), image)

    io.append_line(tmp_path / "h.jsonl", json.dumps({"n": 1}))
    io.append_line(tmp_path / "h.jsonl", json.dumps({"n": 2}) + "\n")
    with open(tmp_path / "h.jsonl", "a") as f:
        f.write('{"n": 3, "to')  # a writer killed mid-line
    assert io.read_jsonl(tmp_path / "h.jsonl") == [{"n": 1}, {"n": 2}]

    assert io.exists(tmp_path / "a.npz") and not io.exists(tmp_path / "nope")
    io.makedirs(tmp_path / "d" / "e")
    assert io.is_dir(tmp_path / "d") and io.is_file(tmp_path / "a.npz")
    assert io.listdir(tmp_path / "d") == ["e"]
    assert io.listdir(tmp_path) == sorted(os.listdir(tmp_path))  # no partials left over
    io.remove_tree(tmp_path / "d")
    io.remove_tree(tmp_path / "d")  # nothing there is fine
    assert not io.exists(tmp_path / "d")


def test_figure(tmp_path):
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    fig, ax = plt.subplots(figsize=(2, 1))
    ax.plot([0, 1], [1, 0])
    io.write_figure(tmp_path / "f.png", fig, dpi=50)
    plt.close(fig)
    assert io.read_image(tmp_path / "f.png").shape[:2] == (50, 100)


class _Boom(Exception):
    pass


def test_a_write_that_raises_leaves_the_old_file_and_no_partial(tmp_path):
    target = tmp_path / "x.json"
    io.write_json(target, {"old": True})
    with pytest.raises(_Boom):
        with io.atomic_write(target) as f:
            f.write(b'{"new": ')
            raise _Boom()
    assert io.read_json(target) == {"old": True}
    assert os.listdir(tmp_path) == ["x.json"]

    class Unserialisable:
        pass
    with pytest.raises(TypeError):
        io.write_json(target, {"new": Unserialisable()})
    assert io.read_json(target) == {"old": True}
    assert os.listdir(tmp_path) == ["x.json"]

    directory = tmp_path / "d"
    with io.atomic_directory(directory) as tmp:
        io.write_text(tmp / "a.txt", "old")
    with pytest.raises(_Boom):
        with io.atomic_directory(directory) as tmp:
            io.write_text(tmp / "a.txt", "new")
            raise _Boom()
    assert io.read_text(directory / "a.txt") == "old"
    assert sorted(os.listdir(tmp_path)) == ["d", "x.json"]
    with io.atomic_directory(directory) as tmp:  # a complete write replaces the whole directory
        io.write_text(tmp / "b.txt", "new")
    assert os.listdir(directory) == ["b.txt"]


def _killed_writer(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          env={**os.environ, "PYTHONPATH": ROOT})


def test_a_killed_write_leaves_the_old_file_and_the_next_write_cleans_up(tmp_path):
    target = tmp_path / "x.json"
    io.write_json(target, {"old": True})
    # SIGKILL in the middle of the write: no cleanup runs in the writer.
    killed = _killed_writer(
        "import os, signal; from sdr_jax.core import io\n"
        f"with io.atomic_write({str(target)!r}) as f:\n"
        "    f.write(b'{\"new\": '); f.flush(); os.kill(os.getpid(), signal.SIGKILL)\n")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert io.read_json(target) == {"old": True}
    (leftover,) = set(os.listdir(tmp_path)) - {"x.json"}
    assert leftover.startswith(".x.json.partial-")
    # A live writer's partial (this process) and another host's are left alone.
    live = f".x.json.partial-{os.getpid()}@{socket.gethostname()}.abc"
    other_host = ".x.json.partial-1@elsewhere.abc"
    other_name = ".y.json.partial-999999999@" + socket.gethostname() + ".abc"
    for name in (live, other_host, other_name):
        (tmp_path / name).write_text("")
    io.write_json(target, {"new": True})
    assert io.read_json(target) == {"new": True}
    assert sorted(os.listdir(tmp_path)) == sorted(["x.json", live, other_host, other_name])


def test_a_killed_directory_write_leaves_the_old_directory(tmp_path):
    target = tmp_path / "route" / "task"
    with io.atomic_directory(target) as tmp:
        io.write_text(tmp / "ranking.json", "{}")
    killed = _killed_writer(
        "import os, signal; from sdr_jax.core import io\n"
        f"with io.atomic_directory({str(target)!r}) as d:\n"
        "    io.write_text(d / 'half', ''); os.kill(os.getpid(), signal.SIGKILL)\n")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert os.listdir(target) == ["ranking.json"]
    assert len(os.listdir(target.parent)) == 2  # the task and the killed writer's partial
    with io.atomic_directory(target) as tmp:
        io.write_text(tmp / "ranking.json", "[]")
    assert os.listdir(target.parent) == ["task"]
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(target).st_mode & 0o777 == 0o777 & ~umask  # not mkdtemp's private 0700
    assert io.read_text(target / "ranking.json") == "[]"


def test_is_dead():
    assert not io.is_dead({"pid": os.getpid(), "host": socket.gethostname()})
    assert not io.is_dead({"pid": 999999999, "host": "another-host"})
    assert io.is_dead({"pid": 999999999, "host": socket.gethostname()})
