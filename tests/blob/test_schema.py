"""The 0301_blob migration creates exactly the cache_* tables the models describe."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

import app.state.models as models
from app.state.db import open_database


def test_blob_migration_matches_models(tmp_path: Path) -> None:
    db = open_database(f"sqlite:///{tmp_path / 'vapp.db'}")
    try:
        with db.engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), models.metadata)
        ours = [d for d in diff if "cache_" in repr(d)]
        assert ours == []
        with db.engine.connect() as conn:
            names = set(db.engine.dialect.get_table_names(conn))
        assert {"cache_blob", "cache_blob_repo", "cache_tag", "cache_prepull"} <= names
    finally:
        db.close()
