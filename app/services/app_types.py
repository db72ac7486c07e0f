"""Plain data of the app lifecycle: what an agent asks for and what it gets back.

These are domain values, shared by every front door (vappc NDJSON, the admin
REST ``/v1/apps``) and by the app service. Their field names are the vappc wire
names the agent already speaks, so the wire codec (``app.vappc.protocol``) can
validate into them directly; the codec owns the framing and the envelopes
(``cmd``/``data``, ``msg``/``type``), not these shapes.

App status, as the agent sees it::

    (StartApp) ──► Starting ──► Running ──► Stopped      (StopApp, or exit code 0)
                      │            │
                      └────────────┴──────► Failed{reason}  (start error, crash: exit code)
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from app.errors import VappError

APP_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
ENV_NAME_RE = re.compile(r"^[^=\x00]+$")


class _Strict(BaseModel):
    """Unknown fields are an error naming the field (old agents never send any)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _nulls_are_defaults(cls, data: Any) -> Any:
        # serde agents send `null` for an absent Option; treat it as "not given"
        # so the field's default applies instead of failing a list/dict type.
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if v is not None}
        return data


class Mount(_Strict):
    host_path: str
    container_path: str
    read_only: bool = False

    @field_validator("host_path", "container_path")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if not value.startswith("/") or "\x00" in value:
            raise ValueError("must be an absolute path")
        return value


class Resources(_Strict):
    memory_mb: int | None = Field(default=None, gt=0)
    cpu_cores: float | None = Field(default=None, gt=0)


class ConfigTemplate(_Strict):
    template: str
    destination: str

    @field_validator("destination")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if not value.startswith("/") or "\x00" in value:
            raise ValueError("must be an absolute path inside the container")
        return value


class SetupTask(_Strict):
    name: str
    command: list[str] = Field(min_length=1)
    timeout_secs: int = Field(default=120, gt=0)


class AppSpec(_Strict):
    """One app: a container from ``image`` plus what to render and run in it.

    Optional extensions (absent in old agents' requests): ``network`` is
    ``"private"`` (own namespace, default), ``"host"``, ``"none"`` or
    ``"app:<app_id>"`` to join another app's network namespace.
    """

    app_id: str
    name: str
    image: str
    command: list[str] | None = None
    args: list[str] = Field(default_factory=list)
    env: list[str] = Field(default_factory=list)
    mounts: list[Mount] = Field(default_factory=list)
    resources: Resources | None = None
    privileged: bool = False
    working_dir: str | None = None
    template_vars: dict[str, str] = Field(default_factory=dict)
    config_templates: list[ConfigTemplate] = Field(default_factory=list)
    setup_tasks: list[SetupTask] = Field(default_factory=list)
    network: str | None = None

    @field_validator("app_id")
    @classmethod
    def _app_id(cls, value: str) -> str:
        if not APP_ID_RE.match(value):
            raise ValueError("must be 1-128 characters [A-Za-z0-9_.-], starting with a letter or digit")
        return value

    @field_validator("image", "name")
    @classmethod
    def _not_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value

    @field_validator("env")
    @classmethod
    def _env(cls, value: list[str]) -> list[str]:
        for item in value:
            name, sep, _ = item.partition("=")
            if not sep or not ENV_NAME_RE.match(name):
                raise ValueError(f"{item!r} is not K=V")
        return value

    @field_validator("working_dir")
    @classmethod
    def _workdir(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("/"):
            raise ValueError("must be an absolute path")
        return value

    @field_validator("network")
    @classmethod
    def _network(cls, value: str | None) -> str | None:
        if value is None or value in ("private", "host", "none"):
            return value
        if value.startswith("app:") and APP_ID_RE.match(value[4:]):
            return value
        raise ValueError("must be private, host, none or app:<app_id>")

    def fingerprint(self) -> str:
        """A stable digest of the spec: a restart with the same spec is idempotent."""
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()


class ContainerGroup(_Strict):
    """Specs started in order; ``shared_network`` puts members 2.. in member 1's netns."""

    group_name: str
    specs: list[AppSpec] = Field(min_length=1)
    shared_network: bool = False


class DnsRecord(_Strict):
    ip: str
    hostname: str


Phase = Literal["Starting", "Running", "Stopped", "Failed"]


@dataclass(frozen=True)
class AppStatus:
    """The state of one app; ``reason`` only for ``Failed``."""

    phase: Phase
    reason: str | None = None
    exit_code: int | None = None

    @classmethod
    def failed(cls, reason: str, exit_code: int | None = None) -> AppStatus:
        return cls("Failed", reason, exit_code)


@dataclass(frozen=True)
class AppHandle:
    app_id: str
    name: str


@dataclass(frozen=True)
class AppSummary:
    app_id: str
    name: str
    status: AppStatus


@dataclass(frozen=True)
class Progress:
    """One step of a long operation; ``percentage`` is 0..100, monotonic per instance."""

    percentage: int
    message: str
    phase: str | None = None
    instance_name: str | None = None
    task_name: str | None = None


@dataclass
class GroupResult:
    group_name: str
    handles: list[AppHandle] = field(default_factory=list)
    error: VappError | None = None
