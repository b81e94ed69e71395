"""Caches for evaluated expressions, keyed by canonical form + data version + semantics.

Both caches are explicit objects handed to an `Evaluator`; nothing is cached globally. The disk cache
writes atomically (temp file + rename), treats an unreadable entry as a miss and skips a write that
fails (full disk, unwritable folder), so a crash or a corrupt file never yields a wrong value and a
cache problem never fails a computation. It is bounded too: past `max_bytes` the entries read or
written longest ago are deleted, so a long mining run cannot fill the disk with features.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np

__all__ = ["MemoryCache", "DiskCache", "cache_key", "DEFAULT_DISK_CACHE_BYTES"]

DEFAULT_DISK_CACHE_BYTES = 4 << 30
"""A disk cache's default bound: Alpha158 of a 500 x 2500 market is ~1.6 GB of float64 results."""

_STALE_TEMP_SECONDS = 3600.0  # a temporary file this old belongs to a writer that died


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
    """One `.npy` file per result under `root`; safe against partial writes and corrupt files.

    Bounded by `max_bytes` (None: unbounded): a read refreshes an entry's modification time, and a
    write that takes the folder past the bound deletes the least recently used entries down to 80% of
    it (a margin, so the next writes do not rescan the folder each time). Several processes may share
    the folder: each counts its own writes on top of its last scan, so between scans the folder can
    exceed the bound by what the others wrote since; a reader whose entry another process evicted
    sees a miss."""

    def __init__(self, root: str | Path, max_bytes: int | None = DEFAULT_DISK_CACHE_BYTES):
        if max_bytes is not None and max_bytes <= 0:
            raise ValueError(f"a disk cache's max_bytes must be positive (or None: unbounded), got {max_bytes}")
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.hits = 0
        self.misses = 0
        self.write_failures = 0
        self.evictions = 0
        self._bytes: int | None = None  # folder size as of the last scan plus this process's writes

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
            path.unlink(missing_ok=True)  # corrupt, stale or just evicted entry: drop it and recompute
            self.misses += 1
            return None
        self.hits += 1
        if self.max_bytes is not None:
            try:
                os.utime(path)  # recently used: evicted last
            except OSError:
                pass
        return arr

    def put(self, key: str, arr: np.ndarray) -> None:
        """Store `arr` under `key`, best effort: a full disk or an unwritable folder costs the cache entry
        (counted in `write_failures`), never the computation that produced the value. A result larger
        than the whole bound is not stored."""
        if self.max_bytes is not None and arr.nbytes > self.max_bytes:
            return
        path = self._path(key)
        tmp = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
            with os.fdopen(fd, "wb") as f:
                np.save(f, arr, allow_pickle=False)
            replaced = _size(path)
            os.replace(tmp, path)
            tmp = None
        except OSError:
            self.write_failures += 1
            return
        finally:
            if tmp is not None:  # a write that did not finish leaves no temporary file behind
                Path(tmp).unlink(missing_ok=True)
        if self.max_bytes is None:
            return
        try:
            if self._bytes is None:
                self._bytes = self.size()
            else:
                self._bytes += _size(path) - replaced
            if self._bytes > self.max_bytes:
                self._evict(int(self.max_bytes * 0.8))
        except OSError:  # an unreadable folder: the bound waits for the next write, the value is stored
            self._bytes = None

    def size(self) -> int:
        """Bytes the cache's entries take now (a scan of the folder)."""
        return sum(size for _, size, _ in self._entries())

    def _entries(self) -> list[tuple[float, int, Path]]:
        """(last use, bytes, path) of every entry; temporary files of writers that died are deleted."""
        entries = []
        now = time.time()
        for path in self.root.glob("*/*"):
            try:
                stat = path.stat()
            except OSError:  # deleted meanwhile by another process
                continue
            if path.suffix == ".npy":
                entries.append((stat.st_mtime, stat.st_size, path))
            elif path.suffix == ".tmp" and now - stat.st_mtime > _STALE_TEMP_SECONDS:
                try:
                    path.unlink()
                except OSError:  # gone already, or not ours to delete
                    pass
        return entries

    def _evict(self, target: int) -> None:
        """Delete the least recently used entries until the folder holds at most `target` bytes."""
        entries = sorted(self._entries())
        total = sum(size for _, size, _ in entries)
        for _, size, path in entries:
            if total <= target:
                break
            try:
                path.unlink()
                self.evictions += 1
            except FileNotFoundError:  # another process evicted it first
                pass
            except OSError:
                continue
            total -= size
        self._bytes = total


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0
