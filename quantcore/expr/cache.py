"""Caches for evaluated expressions, keyed by canonical form + data version + semantics.

Both caches are explicit objects handed to an `Evaluator`; nothing is cached globally. The disk cache
writes atomically (temp file + rename), treats an unreadable entry as a miss and skips a write that
fails (full disk, unwritable folder), so a crash or a corrupt file never yields a wrong value and a
cache problem never fails a computation.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections import OrderedDict
from pathlib import Path

import numpy as np

__all__ = ["MemoryCache", "DiskCache", "cache_key"]


def cache_key(data_version: str, canonical: str, semantics: str, dtype: np.dtype) -> str:
    """One string identifying a result: what was computed, on which data, with which semantics."""
    raw = "\x1f".join([data_version, canonical, semantics, np.dtype(dtype).str])
    return hashlib.sha256(raw.encode()).hexdigest()[:32]


class MemoryCache:
    """Least-recently-used in-memory cache bounded by total array bytes."""

    def __init__(self, max_bytes: int = 1 << 30):
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, np.ndarray] = OrderedDict()
        self._bytes = 0
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> np.ndarray | None:
        arr = self._items.get(key)
        if arr is None:
            self.misses += 1
            return None
        self._items.move_to_end(key)
        self.hits += 1
        return arr

    def put(self, key: str, arr: np.ndarray) -> None:
        if arr.nbytes > self.max_bytes:
            return
        old = self._items.pop(key, None)
        if old is not None:
            self._bytes -= old.nbytes
        arr.setflags(write=False)  # cached values are shared: nobody may mutate them
        self._items[key] = arr
        self._bytes += arr.nbytes
        while self._bytes > self.max_bytes:
            _, evicted = self._items.popitem(last=False)
            self._bytes -= evicted.nbytes

    def __len__(self) -> int:
        return len(self._items)

    @property
    def nbytes(self) -> int:
        return self._bytes


class DiskCache:
    """One `.npy` file per result under `root`; safe against partial writes and corrupt files."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.hits = 0
        self.misses = 0
        self.write_failures = 0

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.npy"

    def get(self, key: str, shape: tuple[int, ...]) -> np.ndarray | None:
        path = self._path(key)
        if not path.exists():
            self.misses += 1
            return None
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError):
            arr = None
        if arr is None or arr.shape != shape:
            path.unlink(missing_ok=True)  # corrupt or stale entry: drop it and recompute
            self.misses += 1
            return None
        self.hits += 1
        return arr

    def put(self, key: str, arr: np.ndarray) -> None:
        """Store `arr` under `key`, best effort: a full disk or an unwritable folder costs the cache entry
        (counted in `write_failures`), never the computation that produced the value."""
        path = self._path(key)
        tmp = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
            with os.fdopen(fd, "wb") as f:
                np.save(f, arr, allow_pickle=False)
            os.replace(tmp, path)
            tmp = None
        except OSError:
            self.write_failures += 1
        finally:
            if tmp is not None:  # a write that did not finish leaves no temporary file behind
                Path(tmp).unlink(missing_ok=True)
