"""Reading every record of a random-access source in order, a chunk of reads at a time."""
from __future__ import annotations

from typing import Any, Iterator

READ_CHUNK = 1024


def iter_records(source: Any, chunk_size: int = READ_CHUNK) -> Iterator[dict[str, Any]]:
    """Yields source[0], source[1], ... using batched `__getitems__` reads where the source
    has them (ArrayRecord sources read a chunk much faster than its records one by one)."""
    size = len(source)
    for start in range(0, size, chunk_size):
        chunk = list(range(start, min(start + chunk_size, size)))
        yield from (source.__getitems__(chunk) if hasattr(source, "__getitems__")
                    else [source[i] for i in chunk])
