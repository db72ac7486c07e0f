"""The bootstrap tables produced by the Alembic migration equal the SQLModel models."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import inspect

from app.state.db import open_database
from app.state.models import metadata


def test_migration_matches_models(tmp_path: Path) -> None:
    db = open_database(f"sqlite:///{tmp_path}/m.db")
    try:
        insp = inspect(db.engine)
        for table in ("bootstrap_intent", "bootstrap_component"):
            migrated = {c["name"]: (str(c["type"]), c["nullable"]) for c in insp.get_columns(table)}
            model = {c.name: (str(c.type), c.nullable) for c in metadata.tables[table].columns}
            assert migrated == model, table
            assert insp.get_pk_constraint(table)["constrained_columns"] == [
                c.name for c in metadata.tables[table].primary_key.columns]
        assert {i["name"] for i in insp.get_indexes("bootstrap_component")} == {"ix_bootstrap_component_intent"}
    finally:
        db.close()
