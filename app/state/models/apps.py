"""App lifecycle state (vappc StartApp/StopApp): one row per app id.

Schema::

    vappc_app  app_id PK │ name │ spec (AppSpec JSON) │ fingerprint (sha256 of spec)
               container_id │ group_name │ state │ reason │ exit_code │ stop_requested
               created_at │ updated_at

``state`` follows the app status machine drawn in ``app/services/app_types.py``
(Starting → Running → Stopped | Failed). The row is the desired/observed record
the daemon rediscovers after a restart; liveness always comes from the
container service (the real process), never from this row alone.
"""

from __future__ import annotations

from sqlmodel import Field, SQLModel


class AppRecord(SQLModel, table=True):
    __tablename__ = "vappc_app"

    app_id: str = Field(primary_key=True, max_length=128)
    name: str
    spec: str
    fingerprint: str = Field(max_length=64)
    container_id: str | None = Field(default=None, max_length=200)
    group_name: str | None = None
    state: str = Field(default="Starting", max_length=16)
    reason: str | None = None
    exit_code: int | None = None
    stop_requested: bool = False
    created_at: float = 0.0
    updated_at: float = 0.0
