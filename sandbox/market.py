"""Share a market between worker processes: exported once as .npy files, memory-mapped by each worker.

The OS page cache holds one copy of the data however many workers read it, and a worker attaches in
milliseconds instead of re-importing or re-generating the market."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np

from quantcore.data.panel import Panel
from quantcore.data.sources import load_market, synthetic_args
from quantcore.errors import DataError
from sandbox.store import code_version

__all__ = [
    "MarketRefused",
    "check_market",
    "market_roots",
    "export_market",
    "attach_market",
    "market_arrays",
    "panel_from_arrays",
    "market_dir",
    "feature_cache_dir",
]

_FORMAT = 1


#: Bounds on a synthetic market a spec may ask for (the parent generates it): the planted-recall
#: markets are 300 x 2520 (0.76M cells), the embedded S&P 500 ~0.6M; 20M cells is ~1 GB of fields.
MAX_SYNTHETIC_INSTRUMENTS = 5000
MAX_SYNTHETIC_DAYS = 20000
MAX_SYNTHETIC_CELLS = 20_000_000
MAX_SYNTHETIC_ALPHAS = 64


class MarketRefused(ValueError):
    """A spec names a market the executor will not load on its behalf; the message says why."""


def check_market(market: str, roots: Sequence[Path]) -> None:
    """Refuse, before anything is loaded, a market a spec may not name: only the embedded market, a
    synthetic one within the size bounds, or a file or folder under one of `roots` (the markets a
    user handed the executor). A generated spec naming a host path gets a refusal that quotes
    nothing of the file."""
    text = str(market).strip()
    low = text.lower()
    if low == "sp500":
        return
    if low == "synthetic" or low.startswith("synthetic:"):
        try:
            args = synthetic_args(text)
        except DataError as exc:
            raise MarketRefused(str(exc)) from None
        n, t = args.get("n_instruments", 300), args.get("n_days", 2520)
        if not (
            0 <= args.get("n_alphas", 4) <= MAX_SYNTHETIC_ALPHAS
            and n <= MAX_SYNTHETIC_INSTRUMENTS
            and t <= MAX_SYNTHETIC_DAYS
            and n * t <= MAX_SYNTHETIC_CELLS
        ):
            raise MarketRefused(
                f"synthetic market {text!r} is too large for a spec: at most {MAX_SYNTHETIC_INSTRUMENTS} "
                f"instruments, {MAX_SYNTHETIC_DAYS} days, {MAX_SYNTHETIC_CELLS:,} instrument-days and "
                f"{MAX_SYNTHETIC_ALPHAS} planted alphas"
            )
        return
    path = Path(os.path.realpath(Path(text).expanduser()))
    if not any(path == root or root in path.parents for root in (Path(os.path.realpath(r)) for r in roots)):
        where = ", ".join(str(r) for r in roots) or "none: pass market_roots to the executor"
        raise MarketRefused(
            f"market {text!r} is not the embedded market, a synthetic one, or under an allowed market folder ({where})"
        )


def market_roots(market: str) -> tuple[Path, ...]:
    """The folder to allow for a market a user named (a qlib folder itself, a bars file's folder);
    none for the embedded and synthetic markets."""
    low = str(market).strip().lower()
    if low == "sp500" or low == "synthetic" or low.startswith("synthetic:"):
        return ()
    path = Path(market).expanduser().absolute()
    return (path if path.is_dir() else path.parent,)


def market_dir(root: str | Path, market: str) -> Path:
    """Where `export_market` puts `market` under `root` (one folder per market spec)."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in market)[:80]
    return Path(root) / "markets" / safe


def feature_cache_dir(folder: str | Path) -> Path:
    """Where workers keep the exported market's evaluated features (`quantcore.expr.cache.DiskCache`):
    one sub-folder per code version, so results of an older operator or kernel are never read."""
    return Path(folder) / "features" / code_version()


def _prune_feature_caches(folder: Path) -> None:
    """Drop the feature caches that older code versions left beside the current one."""
    current = feature_cache_dir(folder)
    for old in (folder / "features").glob("*"):
        if old != current and old.is_dir():
            shutil.rmtree(old, ignore_errors=True)


def export_market(root: str | Path, market: str, panel: Panel | None = None) -> tuple[Path, str]:
    """Export `market` (loaded unless given) under `root` once; returns (folder, data version).
    Written to a temporary folder and renamed, so a reader never sees half a market."""
    target = market_dir(root, market)
    meta_path = target / "meta.json"
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("format") == _FORMAT:
            _prune_feature_caches(target)
            return target, meta["version"]
    panel = panel if panel is not None else load_market(market)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".export-"))
    try:
        np.save(tmp / "calendar.npy", panel.calendar.astype("datetime64[ns]").astype(np.int64))
        np.save(tmp / "starts.npy", np.asarray(panel.starts, dtype=np.int64))
        np.save(tmp / "ends.npy", np.asarray(panel.ends, dtype=np.int64))
        for name, arr in panel.fields.items():
            np.save(tmp / f"field.{name}.npy", np.ascontiguousarray(arr, dtype=np.float64))
        meta = {
            "format": _FORMAT,
            "market": market,
            "name": panel.name,
            "version": panel.version,
            "instruments": list(panel.instruments),
            "fields": list(panel.fields),
            "meta": dict(panel.meta),
        }
        (tmp / "meta.json").write_text(json.dumps(meta))
        try:
            os.rename(tmp, target)
        except OSError:  # another process exported it meanwhile
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target, panel.version


def attach_market(folder: str | Path) -> Panel:
    """The exported market in `folder`, its fields memory-mapped read-only."""
    return panel_from_arrays(market_arrays(folder))


def market_arrays(folder: str | Path, mmap: bool = True) -> dict:
    """The exported market in `folder` as plain data: {"meta", "calendar", "starts", "ends", "fields"}
    (what a Ray executor puts in the object store; arrays memory-mapped read-only when `mmap`)."""
    folder = Path(folder)
    meta = json.loads((folder / "meta.json").read_text())
    mode = "r" if mmap else None
    return {
        "meta": meta,
        "calendar": np.load(folder / "calendar.npy"),
        "starts": np.load(folder / "starts.npy"),
        "ends": np.load(folder / "ends.npy"),
        "fields": {name: np.load(folder / f"field.{name}.npy", mmap_mode=mode) for name in meta["fields"]},
    }


def panel_from_arrays(arrays: dict) -> Panel:
    """A panel over `market_arrays` output; the field arrays are used as they are (no copy)."""
    meta = arrays["meta"]
    panel = Panel(
        calendar=np.asarray(arrays["calendar"]).astype("datetime64[ns]"),
        instruments=tuple(meta["instruments"]),
        fields=dict(arrays["fields"]),
        starts=np.asarray(arrays["starts"]),
        ends=np.asarray(arrays["ends"]),
        name=meta["name"],
        meta=meta["meta"],
    )
    panel.__dict__["version"] = meta["version"]  # known from the export; hashing again would read every page
    return panel
