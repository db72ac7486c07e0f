"""Persistent state: SQLModel tables, the engine, migrations.

Only repositories (``app/state/repos/*`` or a domain's own repository class) talk
to the database; services call them. Each domain owns one models module in
``app/state/models/`` and one Alembic revision per schema change in
``app/state/migrations/versions/``.
"""
