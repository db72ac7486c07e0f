"""The repository of app records (``vappc_app``): the only code that touches that table.

Calls are async and run the short SQL units in a worker thread, so a slow
disk never stalls the event loop that answers Ping and AppState.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from app.services.app_types import AppSpec, AppStatus
from app.state.db import Database
from app.state.models.apps import AppRecord

_KEEP: Any = object()


class AppRecords:
    def __init__(self, db: Database) -> None:
        self.db = db

    def _get(self, app_id: str) -> AppRecord | None:
        with self.db.session() as s:
            return s.get(AppRecord, app_id)

    async def get(self, app_id: str) -> AppRecord | None:
        return await asyncio.to_thread(self._get, app_id)

    def _all(self) -> list[AppRecord]:
        from sqlmodel import select

        with self.db.session() as s:
            return list(s.exec(select(AppRecord).order_by(AppRecord.app_id)))  # type: ignore[arg-type]

    async def all(self) -> list[AppRecord]:
        return await asyncio.to_thread(self._all)

    def _update(self, app_id: str, **values: Any) -> None:
        with self.db.session() as s:
            rec = s.get(AppRecord, app_id)
            if rec is None:
                return
            for key, value in values.items():
                if value is not _KEEP:
                    setattr(rec, key, value)
            rec.updated_at = time.time()
            s.add(rec)
            s.commit()

    def _begin(self, spec: AppSpec, fingerprint: str, group: str | None, container_id: str) -> None:
        now = time.time()
        with self.db.session() as s:
            rec = s.get(AppRecord, spec.app_id)
            if rec is None:
                rec = AppRecord(app_id=spec.app_id, name=spec.name, spec="", fingerprint="", created_at=now)
            rec.name = spec.name
            rec.spec = spec.model_dump_json()
            rec.fingerprint = fingerprint
            rec.group_name = group
            rec.state = "Starting"
            rec.reason = None
            rec.exit_code = None
            rec.stop_requested = False
            # Recorded before create: a daemon that dies mid-create finds (and discards) it.
            rec.container_id = container_id
            rec.updated_at = now
            s.add(rec)
            s.commit()

    async def begin(self, spec: AppSpec, fingerprint: str, group: str | None, container_id: str) -> None:
        await asyncio.to_thread(self._begin, spec, fingerprint, group, container_id)

    async def request_stop(self, app_id: str) -> None:
        await asyncio.to_thread(self._update, app_id, stop_requested=True)

    async def finish(self, app_id: str, status: AppStatus, container_id: Any = _KEEP) -> None:
        await asyncio.to_thread(
            self._update, app_id, state=status.phase, reason=status.reason, exit_code=status.exit_code,
            container_id=container_id,
        )
