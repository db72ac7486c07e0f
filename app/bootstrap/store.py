"""Intents and component records in the database, and the watched intent directory.

The only bootstrap code that talks to the database. Intent documents (REST,
vappc, files) all have one shape, validated by :class:`IntentDoc`::

    name: etcd               # lowercase, digits, '-'
    profile: etcd            # a profile name known to the ProfileStore
    values: {client_port: 2379}
    roles: [control-plane]
    enabled: true

Files in the intents directory (``*.yaml``, ``*.yml``, ``*.toml``) are synced on
every pass: new or changed files upsert their intent (source ``file:<path>``),
a deleted file deletes the intent it created. Intents set through the API are
never touched by the directory sync, and a file cannot take over an API intent.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from sqlmodel import select

from app.bootstrap.instantiate import Intent
from app.bootstrap.model import Record
from app.bootstrap.schema import NAME_RE, decode, format_errors
from app.errors import FailedPrecondition, InvalidArgument, NotFound
from app.state.db import Database
from app.state.models.intents import ComponentRow, IntentRow


class IntentDoc(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    profile: str
    values: dict[str, Any] = Field(default_factory=dict)
    roles: list[str] = Field(default_factory=list)
    enabled: bool = True

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME_RE.match(v):
            raise ValueError("must be lowercase letters, digits and '-', 1-63 characters")
        return v


def parse_intent(data: Any, *, source: str = "request") -> IntentDoc:
    try:
        return IntentDoc.model_validate(data)
    except ValidationError as exc:
        errors = format_errors(exc)
        text = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        raise InvalidArgument(f"invalid intent ({source}): {text}", phase="intent",
                              details={"errors": errors}) from exc


def _to_intent(row: IntentRow) -> Intent:
    return Intent(row.name, row.profile, json.loads(row.values), tuple(json.loads(row.roles)), row.enabled)


def intent_dict(row: IntentRow) -> dict[str, Any]:
    return {"name": row.name, "profile": row.profile, "values": json.loads(row.values),
            "roles": json.loads(row.roles), "enabled": row.enabled, "source": row.source,
            "generation": row.generation, "updated_at": row.updated_at}


class BootstrapStore:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._file_stamps: dict[str, float] = {}

    # --- intents ---------------------------------------------------------------------
    def put_intent(self, doc: IntentDoc, *, source: str = "api") -> tuple[IntentRow, bool]:
        """Create or replace; returns (row, changed). Same content again changes nothing."""
        now = time.time()
        values, roles = json.dumps(doc.values, sort_keys=True), json.dumps(doc.roles)
        with self.db.session() as s:
            row = s.get(IntentRow, doc.name)
            if row is not None and row.source != source:
                raise FailedPrecondition(f"intent {doc.name!r} is managed by {row.source}", phase="intent")
            if row is None:
                row = IntentRow(name=doc.name, profile=doc.profile, values=values, roles=roles,
                                enabled=doc.enabled, source=source, created_at=now, updated_at=now)
            elif (row.profile, row.values, row.roles, row.enabled, row.source) == (
                    doc.profile, values, roles, doc.enabled, source):
                return row, False
            else:
                row.profile, row.values, row.roles, row.enabled, row.source = (
                    doc.profile, values, roles, doc.enabled, source)
                row.generation += 1
                row.updated_at = now
            s.add(row)
            s.commit()
            s.refresh(row)
            return row, True

    def delete_intent(self, name: str) -> None:
        with self.db.session() as s:
            row = s.get(IntentRow, name)
            if row is None:
                raise NotFound(f"no intent {name!r}", phase="intent")
            s.delete(row)
            s.commit()

    def intent_rows(self) -> list[IntentRow]:
        with self.db.session() as s:
            return list(s.exec(select(IntentRow).order_by(IntentRow.name)))  # type: ignore[arg-type]

    def intents(self) -> list[Intent]:
        return [_to_intent(r) for r in self.intent_rows() if r.enabled]

    # --- watched directory -----------------------------------------------------------
    def sync_directory(self, directory: Path) -> list[str]:
        """Apply the directory to the intents; returns problems (bad files are skipped, not fatal)."""
        problems: list[str] = []
        seen: dict[str, float] = {}
        if directory.is_dir():
            for path in sorted(directory.iterdir()):
                if path.suffix not in (".yaml", ".yml", ".toml") or path.name.startswith("."):
                    continue
                try:
                    mtime = path.stat().st_mtime
                except OSError:
                    continue
                seen[str(path)] = mtime
                if self._file_stamps.get(str(path)) == mtime:
                    continue
                try:
                    fmt: Literal["yaml", "toml"] = "toml" if path.suffix == ".toml" else "yaml"
                    doc = parse_intent(decode(path.read_text(), fmt=fmt, source=str(path)), source=str(path))
                    self.put_intent(doc, source=f"file:{path}")
                except (InvalidArgument, FailedPrecondition, OSError) as exc:
                    problems.append(f"{path}: {getattr(exc, 'message', exc)}")
                    seen.pop(str(path))  # retry next pass
        self._file_stamps = seen
        with self.db.session() as s:
            for row in s.exec(select(IntentRow)):
                if row.source.startswith("file:") and row.source[5:] not in seen \
                        and not Path(row.source[5:]).exists():
                    s.delete(row)
            s.commit()
        return problems

    # --- component records -----------------------------------------------------------
    def records(self) -> dict[str, Record]:
        with self.db.session() as s:
            return {r.key: _to_record(r) for r in s.exec(select(ComponentRow))}

    def save_records(self, records: Iterable[Record]) -> None:
        now = time.time()
        with self.db.session() as s:
            for rec in records:
                row = s.get(ComponentRow, rec.key) or ComponentRow(key=rec.key, intent=rec.intent)
                row.intent, row.phase, row.restarts, row.next_attempt_at = (
                    rec.intent, rec.phase, rec.restarts, rec.next_attempt_at)
                row.last_error, row.last_probe_at, row.probe_failures, row.healthy = (
                    rec.last_error, rec.last_probe_at, rec.probe_failures, rec.healthy)
                row.done_execs, row.started_at, row.updated_at = (
                    json.dumps(list(rec.done_execs)), rec.started_at, now)
                s.add(row)
            s.commit()

    def delete_record(self, key: str) -> None:
        with self.db.session() as s:
            row = s.get(ComponentRow, key)
            if row is not None:
                s.delete(row)
                s.commit()


def _to_record(r: ComponentRow) -> Record:
    return Record(r.key, r.intent, r.phase, r.restarts, r.next_attempt_at, r.last_error, r.last_probe_at,
                  r.probe_failures, r.healthy, tuple(json.loads(r.done_execs)), r.started_at)
