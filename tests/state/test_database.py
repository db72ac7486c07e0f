"""State: migrations produce exactly the models' schema, upgrade in place, on SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlmodel import select

from app.errors import Unavailable
from app.state.db import (
    MIGRATIONS_DIR,
    alembic_config,
    current_revisions,
    make_engine,
    migrate,
    open_database,
)
from app.state.models import metadata
from app.state.models.meta import NodeFact


def _heads() -> set[str]:
    cfg = alembic_config(make_engine("sqlite://"))
    return set(ScriptDirectory.from_config(cfg).get_heads())


def _schema_diff(url: str) -> list[object]:
    engine = make_engine(url)
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": False})
        diff = compare_metadata(ctx, metadata)
    engine.dispose()
    return diff


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'vapp.db'}"
    # A fresh database per test on the suite's PostgreSQL server.
    base: str = request.getfixturevalue("postgres_url")
    name = "t" + uuid.uuid4().hex[:12]
    admin = sa.create_engine(base.replace("postgresql://", "postgresql+psycopg://"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return base.rsplit("/", 1)[0] + "/" + name


def test_fresh_database_migrates_to_heads_and_matches_models(db_url: str) -> None:
    db = open_database(db_url)
    assert current_revisions(db.engine) == _heads()
    db.close()
    diff = _schema_diff(db_url)
    assert diff == [], f"migrations and models disagree: {diff}"


def test_migrate_is_idempotent_and_keeps_data(db_url: str) -> None:
    db = open_database(db_url)
    with db.session() as s:
        s.add(NodeFact(key="node-id", value="abc"))
        s.commit()
    db.close()
    db = open_database(db_url)  # second start: nothing to do, data intact
    with db.session() as s:
        assert s.exec(select(NodeFact)).one().value == "abc"
    db.close()


def test_older_revision_upgrades_in_place(db_url: str) -> None:
    engine = make_engine(db_url)
    migrate(engine, "0001_base")
    assert current_revisions(engine) == {"0001_base"}
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO node_fact (key, value) VALUES ('k', 'v')"))
    engine.dispose()
    db = open_database(db_url)
    assert current_revisions(db.engine) == _heads()
    with db.session() as s:
        assert s.exec(select(NodeFact).where(NodeFact.key == "k")).one().value == "v"
    db.close()


def test_every_revision_chains_to_base() -> None:
    script = ScriptDirectory(str(MIGRATIONS_DIR))
    bases = script.get_bases()
    assert bases == ["0001_base"]
    for rev in script.walk_revisions():
        assert rev.revision and rev.doc, f"{rev.revision}: every migration says what it does"


def test_unreachable_database_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(Unavailable, match="cannot open database"):
        open_database("postgresql://nobody@127.0.0.1:1/none")


def test_sqlite_uses_wal(tmp_path: Path) -> None:
    db = open_database(f"sqlite:///{tmp_path / 'v.db'}")
    with db.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    db.close()
