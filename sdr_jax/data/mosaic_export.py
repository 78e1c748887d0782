"""A compact, lossless file of the source images a `mosaic` build reads.

For machines without the source packages (a lent GPU, a TPU VM): `launch/build_data.py
--export=FILE` writes it where the sources are installed; a directory holding it as
`mosaic_export.npz`, given as `--manual_dir`, builds the very same dataset (same ids, images and
splits) elsewhere. The installed sources are ~400 MB and the built default dataset 66 MB; the
export is ~18 MB: per domain only the ranks the config uses, gray domains as one channel, LZMA.

Layout (a zip of .npy members, `np.load` reads it): `format` (1,) int64, and per domain
`<domain>/images` (N, 32, 32) or (N, 32, 32, 3) uint8, the first N images in rank order;
`<domain>/labels` (N,) int64; `<domain>/num_images` (1,) the domain's size before any cap (it fixes
the split plan).
"""
from __future__ import annotations

import io
import os
import zipfile
from typing import Mapping, NamedTuple

import numpy as np

from sdr_jax.core import io as core_io
from sdr_jax.data import sources

FILE_NAME = 'mosaic_export.npz'
FORMAT = 1


class ExportedDomain(NamedTuple):
    images: np.ndarray       # uint8 (N, 32, 32, 3): the first N ranks
    labels: np.ndarray       # int64 (N,)
    num_images: int          # the domain's size (N <= num_images)


def find(manual_dir: str | os.PathLike | None) -> str | None:
    """The export inside `manual_dir`, or None (then manual_dir mirrors the sources)."""
    if manual_dir is None:
        return None
    path = os.path.join(manual_dir, FILE_NAME)
    return path if os.path.isfile(path) else None


def save(path: str | os.PathLike, domains: Mapping[str, ExportedDomain]) -> None:
    """Writes the export atomically (nothing is left behind if it fails)."""
    members = {'format': np.asarray([FORMAT], np.int64)}
    for name, domain in domains.items():
        images = domain.images
        if images.ndim == 4 and np.array_equal(images[..., :1].repeat(3, -1), images):
            images = images[..., 0]  # gray: one channel
        members[f'{name}/images'] = images
        members[f'{name}/labels'] = domain.labels.astype(np.int64)
        members[f'{name}/num_images'] = np.asarray([domain.num_images], np.int64)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, 'w', compression=zipfile.ZIP_LZMA) as archive:
        for key, array in members.items():
            with archive.open(key + '.npy', 'w') as member:
                np.lib.format.write_array(member, np.ascontiguousarray(array),
                                          allow_pickle=False)
    core_io.write_bytes(path, buffer.getvalue())


def load(path: str | os.PathLike) -> dict[str, ExportedDomain]:
    try:
        arrays = core_io.read_npz(path)
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise sources.DataError(f'{path} is not a readable mosaic export ({error}); write it '
                                'again with `launch/build_data.py --export=FILE`.') from error
    if arrays.get('format', np.zeros(1)).tolist() != [FORMAT]:
        raise sources.DataError(f'{path} is not a mosaic export of format {FORMAT}; write it '
                                'again with `launch/build_data.py --export=FILE`.')
    domains = {}
    for key in arrays:
        if key.endswith('/images'):
            name = key[:-len('/images')]
            images = arrays[key]
            if images.ndim == 3:
                images = images[..., None].repeat(3, -1)
            domains[name] = ExportedDomain(images, arrays[f'{name}/labels'],
                                           int(arrays[f'{name}/num_images'][0]))
    return domains
