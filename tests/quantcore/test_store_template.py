"""New SQLite MLflow stores seeded from a pristine copy: same schema and behaviour as a store MLflow
migrates itself, and any bad template is ignored (real MLflow, real SQLite, temp folders)."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from quantcore.recording import Recorder
from quantcore.recording.store_template import keep_template, seed_store, template_path


def _env(cache: Path | str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["RDQUANT_CACHE_DIR"] = str(cache)
    return env


def _schema(db: Path) -> list[tuple]:
    """Every table, index and trigger with its definition; a table's columns and constraints as a
    sorted list, since MLflow's migrations recreate some tables with their CHECK constraints in
    set-iteration order (it differs between two migrations of the same schema)."""
    with sqlite3.connect(db) as con:
        rows = con.execute("SELECT type, name, tbl_name, sql FROM sqlite_master").fetchall()
    return sorted(
        ((kind, name, table, _items(sql) if kind == "table" else sql) for kind, name, table, sql in rows), key=str
    )


def _items(sql: str | None) -> tuple[str, ...] | None:
    """The comma-separated parts inside a CREATE TABLE's outer parentheses, whitespace-normalised."""
    if sql is None:
        return None
    body = sql[sql.index("(") + 1 : sql.rindex(")")]
    parts, depth, current = [], 0, []
    for ch in body:
        if ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
            continue
        depth += (ch == "(") - (ch == ")")
        current.append(ch)
    parts.append("".join(current))
    return tuple(sorted(" ".join(p.split()) for p in parts))


def _experiments(db: Path) -> list[tuple]:
    with sqlite3.connect(db) as con:
        return con.execute("SELECT experiment_id, name, artifact_location FROM experiments ORDER BY 1").fetchall()


def _log_and_read(rec: Recorder) -> dict:
    with rec.start_run("probe") as run:
        run.log_params({"alpha": 0.5})
        run.log_metrics({"ic": 0.05})
        run_id = run.run_id
    got = rec.client.get_run(run_id).data
    return {"params": got.params, "metrics": got.metrics}


def test_second_new_store_is_seeded_and_equals_a_migrated_one(tmp_path):
    cache = tmp_path / "cache"
    first = Recorder.open(tmp_path / "a", "exp", environ=_env(cache))
    template = template_path(_env(cache))
    assert template is not None and template.is_file()  # made from the first store
    assert _experiments(template) == []
    migrated = Recorder.open(tmp_path / "plain", "exp", environ=_env(""))  # templates off
    seeded_db = tmp_path / "b" / "mlflow.db"
    assert seed_store(seeded_db, template)
    seeded_db.unlink()
    seeded = Recorder.open(tmp_path / "b", "exp", environ=_env(cache))
    assert _schema(seeded_db) == _schema(tmp_path / "plain" / "mlflow.db")
    # MLflow added its Default experiment to the seeded store itself, with the same artifact root
    assert _experiments(seeded_db)[0] == _experiments(tmp_path / "plain" / "mlflow.db")[0]
    assert [e[1] for e in _experiments(seeded_db)] == ["Default", "exp"]
    for rec in (first, migrated, seeded):
        assert _log_and_read(rec) == {"params": {"alpha": "0.5"}, "metrics": {"ic": 0.05}}
    assert oct(seeded_db.stat().st_mode & 0o777) == oct((tmp_path / "plain" / "mlflow.db").stat().st_mode & 0o777)


@pytest.mark.parametrize("damage", ["garbage", "foreign", "truncated"])
def test_a_bad_template_is_ignored_and_replaced(tmp_path, damage):
    cache = tmp_path / "cache"
    Recorder.open(tmp_path / "good", "exp", environ=_env(cache))
    template = template_path(_env(cache))
    if damage == "garbage":
        template.write_bytes(b"not a database" * 100)
    elif damage == "foreign":
        with sqlite3.connect(template) as con:  # a template that somehow holds an experiment
            con.execute(
                "INSERT INTO experiments (experiment_id, name, artifact_location, lifecycle_stage) "
                "VALUES (7, 'leak', '/x', 'active')"
            )
    else:
        template.write_bytes(template.read_bytes()[:4096])
    db = tmp_path / "new" / "mlflow.db"
    assert not seed_store(db, template) and not db.exists()
    rec = Recorder.open(tmp_path / "new", "exp", environ=_env(cache))  # built the usual way
    assert _log_and_read(rec) == {"params": {"alpha": "0.5"}, "metrics": {"ic": 0.05}}
    assert [e[1] for e in _experiments(db)] == ["Default", "exp"]
    assert _experiments(template) == []  # replaced by a good one from the new store
    assert seed_store(tmp_path / "next" / "mlflow.db", template)


def test_seeding_never_touches_an_existing_store(tmp_path):
    cache = tmp_path / "cache"
    rec = Recorder.open(tmp_path / "a", "exp", environ=_env(cache))
    _log_and_read(rec)
    db = tmp_path / "a" / "mlflow.db"
    before = db.read_bytes()
    assert not seed_store(db, template_path(_env(cache)))
    assert db.read_bytes() == before
    assert not keep_template(db, template_path(_env(cache)))  # a valid template exists: kept as is


def test_template_location_follows_the_environment(tmp_path):
    assert template_path(_env("")) is None
    assert template_path(_env(tmp_path)).parent == tmp_path
    env = {"XDG_CACHE_HOME": str(tmp_path / "xdg"), "HOME": str(tmp_path / "home")}
    assert template_path(env).parent == tmp_path / "xdg" / "rdquant"
    assert template_path({"HOME": str(tmp_path / "home")}).parent == tmp_path / "home" / ".cache" / "rdquant"
    assert template_path({}) is None
