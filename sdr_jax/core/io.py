"""Files of a run, through `etils.epath`: JSON, text, NumPy arrays, PNG images, atomic replace.

Every write that replaces a file goes through `atomic_write` (or a helper built on it): the
bytes go to a temporary sibling named after its writer (`.<name>.partial-<pid>@<host>.<token>`),
which is renamed over the target only once complete. A writer that raises removes its partial;
one that is killed (SIGKILL runs no cleanup) leaves the old file intact and a partial, which the
next write of the same name removes once its writer is surely gone (this host, pid dead).
`atomic_directory` does the same for a directory built in place (an exported sub-net).

Paths are `str`, `os.PathLike` or `epath.Path`. Local paths are what the tests exercise;
Orbax checkpoints are the only part of a run tested on nothing else.
"""
from __future__ import annotations

import contextlib
import io as _io
import json
import os
import re
import secrets
import socket
import sys
from typing import Any, BinaryIO, Iterator, Mapping, Union

import numpy as np
from etils import epath

PathLike = Union[str, os.PathLike, epath.Path]

_PARTIAL = ".partial-"


def path(p: PathLike) -> epath.Path:
    return epath.Path(p)


def exists(p: PathLike) -> bool:
    return epath.Path(p).exists()


def is_dir(p: PathLike) -> bool:
    return epath.Path(p).is_dir()


def is_file(p: PathLike) -> bool:
    return epath.Path(p).is_file()


def listdir(p: PathLike) -> list[str]:
    """The names in a directory, sorted."""
    return sorted(child.name for child in epath.Path(p).iterdir())


def makedirs(p: PathLike) -> epath.Path:
    p = epath.Path(p)
    p.mkdir(parents=True, exist_ok=True)
    return p


def remove_tree(p: PathLike) -> None:
    """Removes a file or a directory tree; nothing there is fine."""
    p = epath.Path(p)
    if p.is_dir():
        p.rmtree()
    elif p.exists():
        p.unlink()


# -- reading -----------------------------------------------------------------------------------

def read_bytes(p: PathLike) -> bytes:
    return epath.Path(p).read_bytes()


def read_text(p: PathLike) -> str:
    return epath.Path(p).read_text()


def read_json(p: PathLike, default: Any = None) -> Any:
    """The JSON value in a file, or `default` when there is no file."""
    p = epath.Path(p)
    if not p.exists():
        return default
    return json.loads(p.read_text())


def read_jsonl(p: PathLike) -> list[Any]:
    """One JSON value per line; a torn last line (a writer killed mid-line) is skipped."""
    p = epath.Path(p)
    if not p.exists():
        return []
    rows = []
    for line in p.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def read_npz(p: PathLike) -> dict[str, np.ndarray]:
    """Every array of an `.npz` file, loaded (no pickles)."""
    with epath.Path(p).open("rb") as f, np.load(f, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def read_npy(p: PathLike) -> np.ndarray:
    with epath.Path(p).open("rb") as f:
        return np.load(f, allow_pickle=False)


def read_image(p: PathLike) -> np.ndarray:
    """An image file as a uint8 array (H, W[, C])."""
    from PIL import Image
    with Image.open(_io.BytesIO(read_bytes(p))) as image:
        return np.asarray(image)


# -- writing (atomic) --------------------------------------------------------------------------

@contextlib.contextmanager
def atomic_write(p: PathLike) -> Iterator[BinaryIO]:
    """A binary file handle whose content replaces `p` only if the block completes."""
    target = epath.Path(p)
    tmp = _partial_name(target)
    try:
        with tmp.open("wb") as f:
            yield f
        tmp.replace(target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


@contextlib.contextmanager
def atomic_directory(p: PathLike) -> Iterator[epath.Path]:
    """A fresh temporary directory to fill; it replaces the directory `p` if the block completes."""
    target = epath.Path(p)
    tmp = _partial_name(target)
    tmp.mkdir()
    try:
        yield tmp
        if target.exists():
            remove_tree(target)
        tmp.replace(target)
    except BaseException:
        remove_tree(tmp)
        raise


def write_bytes(p: PathLike, data: bytes) -> None:
    with atomic_write(p) as f:
        f.write(data)


def write_text(p: PathLike, text: str) -> None:
    write_bytes(p, text.encode("utf-8"))


def write_json(p: PathLike, value: Any, *, indent: int | None = 1, sort_keys: bool = False
               ) -> None:
    write_text(p, json.dumps(value, indent=indent, sort_keys=sort_keys))


def write_npz(p: PathLike, arrays: Mapping[str, np.ndarray]) -> None:
    buffer = _io.BytesIO()
    np.savez(buffer, **arrays)
    write_bytes(p, buffer.getvalue())


def write_npy(p: PathLike, array: np.ndarray) -> None:
    buffer = _io.BytesIO()
    np.save(buffer, np.asarray(array), allow_pickle=False)
    write_bytes(p, buffer.getvalue())


def write_image(p: PathLike, image: np.ndarray | bytes) -> None:
    """A PNG file from a uint8 array (H, W[, C]), or already-encoded PNG bytes."""
    if not isinstance(image, (bytes, bytearray)):
        from PIL import Image
        buffer = _io.BytesIO()
        Image.fromarray(np.asarray(image)).save(buffer, format="PNG")
        image = buffer.getvalue()
    write_bytes(p, bytes(image))


def figure_png(figure: Any, **savefig_kwargs: Any) -> bytes:
    """A matplotlib figure encoded as PNG bytes."""
    buffer = _io.BytesIO()
    figure.savefig(buffer, format="png", **savefig_kwargs)
    return buffer.getvalue()


def write_figure(p: PathLike, figure: Any, **savefig_kwargs: Any) -> None:
    """A matplotlib figure as a PNG file."""
    write_bytes(p, figure_png(figure, **savefig_kwargs))


def append_line(p: PathLike, line: str) -> None:
    """Appends one line (a JSONL row). Local files append in place; elsewhere (no append on
    object stores) the file is rewritten atomically."""
    target = epath.Path(p)
    text = line.rstrip("\n") + "\n"
    if _is_local(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(os.fspath(target), "a") as f:
            f.write(text)
    else:
        write_text(target, (target.read_text() if target.exists() else "") + text)


# -- processes and partials --------------------------------------------------------------------

def is_dead(holder: Mapping[str, Any]) -> bool:
    """Whether the process {'pid', 'host'} is surely gone (only this host's can be checked)."""
    if holder.get("host") != socket.gethostname():
        return False  # another host's pids cannot be checked from here
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _partial_name(target: epath.Path) -> epath.Path:
    """A temporary sibling of `target` named after its writer; a dead writer's are removed."""
    parent = target.parent
    parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(parent, target.name)
    return parent / (f".{target.name}{_PARTIAL}{os.getpid()}@{socket.gethostname()}."
                     f"{secrets.token_hex(4)}")


def remove_stale_partials(parent: PathLike, name: str) -> None:
    """Removes the temporary siblings of `name` whose writer is dead (see the module doc)."""
    partial = re.compile(rf"\.{re.escape(name)}{re.escape(_PARTIAL)}(\d+)@(.+)\.[0-9a-z_]+")
    parent = epath.Path(parent)
    for entry in parent.iterdir():
        match = partial.fullmatch(entry.name)
        if match and is_dead({"pid": int(match[1]), "host": match[2]}):
            print(f"removing {entry}, left by a killed writer", file=sys.stderr, flush=True)
            remove_tree(entry)


def _is_local(p: epath.Path) -> bool:
    return "://" not in os.fspath(p)
