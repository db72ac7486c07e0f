"""Bootstrap state: intents (what the node should run) and the reconcile loop's records.

Schema::

    bootstrap_intent     name PK │ profile │ values (JSON object) │ roles (JSON list) │ enabled
                         source ("api" or "file:<path>") │ generation │ created_at │ updated_at
    bootstrap_component  key PK ("<intent>.<component>") │ intent │ phase │ restarts │ next_attempt_at
                         last_error │ last_probe_at │ probe_failures │ healthy │ done_execs (JSON list)
                         started_at │ updated_at

An intent row is the desired state; a component row is bookkeeping only (the
truth about a running component is asked from its driver on every pass), so a
lost component row costs at most a forgotten backoff, never a wrong action.
"""

from __future__ import annotations

from sqlmodel import Field, SQLModel


class IntentRow(SQLModel, table=True):
    __tablename__ = "bootstrap_intent"

    name: str = Field(primary_key=True, max_length=63)
    profile: str = Field(max_length=200)
    values: str = "{}"
    roles: str = "[]"
    enabled: bool = True
    source: str = Field(default="api", max_length=1000)
    generation: int = 1
    created_at: float = 0.0
    updated_at: float = 0.0


class ComponentRow(SQLModel, table=True):
    __tablename__ = "bootstrap_component"

    key: str = Field(primary_key=True, max_length=200)
    intent: str = Field(index=True, max_length=63)
    phase: str = Field(default="pending", max_length=32)
    restarts: int = 0
    next_attempt_at: float = 0.0
    last_error: str | None = None
    last_probe_at: float = 0.0
    probe_failures: int = 0
    healthy: bool | None = None
    done_execs: str = "[]"
    started_at: float | None = None
    updated_at: float = 0.0
