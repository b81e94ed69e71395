"""A new SQLite MLflow store seeded from a pristine copy instead of running MLflow's migrations.

MLflow builds a new tracking database by creating its first schema and then applying every migration
since (69 for MLflow 3.x): ~2.8 s of a 2-core machine, paid by each fresh store (a workflow's first
run, every benchmark or test store). The result is always the same empty schema, so the first store
made with an MLflow version is kept, emptied of experiments, as `mlflow-<version>.db` in a cache
folder, and later new stores start as a copy of it. MLflow then finds its tables at the latest
revision, skips the migrations, and adds its Default experiment (with this store's artifact root)
itself, as it does for any database that lacks one.

Best effort throughout: a missing, unreadable or foreign template, or any file-system error, only
means MLflow builds the store the usual way.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Mapping

__all__ = ["template_path", "seed_store", "keep_template"]

#: Environment variable naming the folder for templates; set it to an empty string to turn them off.
CACHE_ENV = "RDQUANT_CACHE_DIR"


def template_path(environ: Mapping[str, str]) -> Path | None:
    """Where the template for the installed MLflow lives (None: templates turned off, or no MLflow)."""
    folder = environ.get(CACHE_ENV)
    if folder is None:
        base = environ.get("XDG_CACHE_HOME") or (str(Path(environ["HOME"]) / ".cache") if environ.get("HOME") else None)
        if base is None:
            return None
        folder = str(Path(base) / "rdquant")
    if not folder:
        return None
    try:
        return Path(folder) / f"mlflow-{version('mlflow')}.db"
    except PackageNotFoundError:
        return None


def seed_store(db: Path, template: Path | None) -> bool:
    """Create the database file `db` (which must not exist yet) as a copy of a valid template; True
    if it did. Never replaces an existing file: a store another process just made is left alone."""
    if template is None or db.exists() or not _valid(template):
        return False
    try:
        with _scratch_copy(template, db.parent, ".mlflow-seed-") as copy:
            os.link(copy, db)  # fails if db appeared meanwhile
        return True
    except (OSError, sqlite3.Error):
        return False


def keep_template(db: Path, template: Path | None) -> bool:
    """Save the store MLflow just created at `db` as the template (experiments removed), unless a
    valid one exists; True if saved. Only a store holding nothing but MLflow's Default experiment
    qualifies. An invalid template (damaged, foreign) is replaced."""
    if template is None or _valid(template):
        return False
    try:
        with _scratch_copy(db, template.parent, ".mlflow-template-") as copy:
            con = sqlite3.connect(copy)
            try:
                if con.execute("SELECT experiment_id FROM experiments").fetchall() != [(0,)]:
                    return False
                if any(con.execute(f"SELECT 1 FROM {t} LIMIT 1").fetchone() for t in ("runs", "experiment_tags")):
                    return False
                con.execute("DELETE FROM experiments")
                con.commit()
            finally:
                con.close()
            if not _valid(copy):
                return False
            os.replace(copy, template)
        return True
    except (OSError, sqlite3.Error):
        return False


@contextmanager
def _scratch_copy(src: Path, folder: Path, prefix: str) -> Iterator[Path]:
    """A copy of database `src` under a fresh name in `folder` (created with the umask's permissions,
    as MLflow's own file would be; mkstemp's 0600 would not), removed afterwards unless moved away."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{prefix}{os.getpid()}-{secrets.token_hex(6)}.db"
    with open(path, "x"):
        pass
    try:
        _copy(src, path)
        yield path
    finally:
        try:
            os.unlink(path)
        except OSError:
            pass


def _copy(src: Path, dst: Path) -> None:
    """A consistent copy through SQLite's backup API (safe while another connection has src open)."""
    source, target = sqlite3.connect(f"file:{src}?mode=ro", uri=True), sqlite3.connect(dst)
    try:
        source.backup(target)
    finally:
        source.close()
        target.close()


def _valid(template: Path) -> bool:
    """An intact SQLite file with MLflow's schema stamped by alembic and no experiments in it."""
    if not template.is_file():
        return False
    try:
        con = sqlite3.connect(f"file:{template}?mode=ro", uri=True)
        try:
            if con.execute("PRAGMA quick_check").fetchone() != ("ok",):
                return False
            if not con.execute("SELECT version_num FROM alembic_version").fetchone():
                return False
            return con.execute("SELECT COUNT(*) FROM experiments").fetchone() == (0,)
        finally:
            con.close()
    except sqlite3.Error:
        return False
