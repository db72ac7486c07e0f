"""Profile schema: the declarative description of a node's components.

A profile is a TOML or YAML document validated by the pydantic models below;
every error names the field that is wrong (``components[1].tasks[0].timeout``).

Document shape (YAML)::

    name: etcd
    variables:                      # every template variable, with its type
      etcd_image: {type: image, default: "registry.k8s.io/etcd:3.5.12-0"}
      client_port: {type: port, default: 2379}
    pki:                            # certificates the profile needs (see pki.py)
      cas: [etcd]
      certs:
        - {name: etcd-server, ca: etcd, cn: "{{ node_name }}", usages: [server, client],
           dns: [localhost], ips: ["127.0.0.1"]}
    kubeconfigs: []                 # see kubeconfig.py
    components:
      - name: etcd
        image: "{{ etcd_image }}"
        command: [etcd, --config-file, "{{ component_dir }}/config/etcd.yaml"]
        network: host
        templates: [{source: etcd.yaml.j2, dest: config/etcd.yaml}]
        depends_on: []
        health: {type: https, url: "https://127.0.0.1:{{ client_port }}/health", ...}
        tasks: [{type: render}, {type: container}, {type: wait}]

Every string inside ``components``, ``pki`` and ``kubeconfigs`` is itself a
Jinja2 template over the variables (strict: an undeclared or undefined name is
an error naming the field and the variable). Host paths are bound into
containers at the same path, so a command reads the same file whether the
component runs in a container or, in early tests, as a host process.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from app.errors import InvalidArgument

NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_name(value: str) -> str:
    if not NAME_RE.match(value):
        raise ValueError("must be lowercase letters, digits and '-', 1-63 characters")
    return value


# --- variables -----------------------------------------------------------------------
VarType = Literal["string", "int", "bool", "port", "ip", "cidr", "hostname", "path", "url", "image",
                  "duration", "list", "enum"]


class VariableDecl(Strict):
    """One declared template variable; values are checked by ``variables.coerce``."""

    type: VarType = "string"
    description: str = ""
    default: Any = None
    required: bool = False
    choices: list[str] | None = None  # for enum
    pattern: str | None = None  # for string/hostname/path
    min: int | None = None  # for int/port/duration seconds
    max: int | None = None
    secret: bool = False  # never echoed back by status/plan

    @model_validator(mode="after")
    def _enum_has_choices(self) -> VariableDecl:
        if self.type == "enum" and not self.choices:
            raise ValueError("an enum variable needs 'choices'")
        if self.pattern is not None:
            try:
                re.compile(self.pattern)
            except re.error as exc:
                raise ValueError(f"pattern is not a regular expression: {exc}") from exc
        return self


# --- health checks -------------------------------------------------------------------
class HttpCheck(Strict):
    type: Literal["http", "https"]
    url: str
    ca: str | None = None  # CA bundle to verify the server with (https)
    cert: str | None = None  # client certificate (https with client auth)
    key: str | None = None
    expect_status: int = 200
    expect_body: str | None = None  # substring the body must contain


class TcpCheck(Strict):
    type: Literal["tcp"]
    host: str = "127.0.0.1"
    port: int | str


class CommandCheck(Strict):
    type: Literal["command"]
    command: list[str] = Field(min_length=1)
    in_container: bool = False  # run through the driver's exec instead of on the host


HealthCheck = Annotated[HttpCheck | TcpCheck | CommandCheck, Field(discriminator="type")]


class Health(Strict):
    check: HealthCheck
    interval_seconds: float = Field(30.0, gt=0)  # steady-state probe period
    timeout_seconds: float = Field(5.0, gt=0)
    failure_threshold: int = Field(3, ge=1)  # consecutive failures before a restart


# --- tasks ---------------------------------------------------------------------------
class RenderTask(Strict):
    type: Literal["render"]


class ContainerTask(Strict):
    type: Literal["container"]


class WaitTask(Strict):
    type: Literal["wait"]
    check: HealthCheck | None = None  # default: the component's health check
    timeout_seconds: float = Field(60.0, gt=0)
    interval_seconds: float = Field(0.2, gt=0)


class ExecTask(Strict):
    """A command inside the component; runs once per spec, skipped when ``unless`` succeeds."""

    type: Literal["exec"]
    name: str
    command: list[str] = Field(min_length=1)
    unless: list[str] | None = None
    timeout_seconds: float = Field(30.0, gt=0)


Task = Annotated[RenderTask | ContainerTask | WaitTask | ExecTask, Field(discriminator="type")]


# --- components ----------------------------------------------------------------------
class Mount(Strict):
    source: str
    target: str | None = None  # default: the same path as the source
    readonly: bool = True
    create: bool = False  # create the source directory when it is missing


class Volume(Strict):
    """A directory the loop owns under the component dir, exposed as ``volumes.<name>``."""

    name: str
    @field_validator("name")
    @classmethod
    def _name_ok(cls, value: str) -> str:
        return _check_name(value)


class TemplateFile(Strict):
    source: str  # a file in the profile's templates directory, or inline with ``content``
    dest: str  # relative to the component dir
    content: str | None = None
    mode: int = 0o644


class Component(Strict):
    name: str
    image: str = ""  # required unless runs_on is "host"
    runs_on: Literal["container", "host"] = "container"  # host: a host process (e.g. the kubelet)
    command: list[str] = Field(min_length=1)
    env: dict[str, str] = Field(default_factory=dict)
    mounts: list[Mount] = Field(default_factory=list)
    volumes: list[Volume] = Field(default_factory=list)
    network: Literal["host", "none", "pod"] = "host"
    privileged: bool = False
    templates: list[TemplateFile] = Field(default_factory=list)
    depends_on: list[str] = Field(default_factory=list)
    health: Health | None = None
    tasks: list[Task] | None = None  # default: render, container, wait (if health)
    restart: Literal["always", "on-failure", "never"] = "always"
    roles: list[str] | None = None  # only on nodes with one of these roles (None: all)
    enabled: str | bool = True  # may be a template expression rendering to true/false

    @field_validator("name")
    @classmethod
    def _name_ok(cls, value: str) -> str:
        return _check_name(value)

    @model_validator(mode="after")
    def _tasks_sane(self) -> Component:
        if self.runs_on == "container" and not self.image:
            raise ValueError("'image' is required for a component that runs in a container")
        if self.tasks is not None:
            kinds = [t.type for t in self.tasks]
            if kinds.count("container") != 1:
                raise ValueError("tasks must contain exactly one 'container' task")
            if "render" in kinds and kinds.index("render") > kinds.index("container"):
                raise ValueError("the 'render' task must come before the 'container' task")
            for t in self.tasks:
                if t.type == "wait" and t.check is None and self.health is None:
                    raise ValueError("a 'wait' task without 'check' needs the component's 'health'")
        return self

    def effective_tasks(self) -> list[Any]:
        if self.tasks is not None:
            return list(self.tasks)
        out: list[Any] = [RenderTask(type="render"), ContainerTask(type="container")]
        if self.health is not None:
            out.append(WaitTask.model_validate({"type": "wait"}))
        return out


# --- PKI and kubeconfigs -------------------------------------------------------------
class CertSpec(Strict):
    name: str
    ca: str
    cn: str
    organization: list[str] = Field(default_factory=list)
    usages: list[Literal["server", "client"]] = Field(min_length=1)
    dns: list[str] = Field(default_factory=list)
    ips: list[str] = Field(default_factory=list)
    roles: list[str] | None = None


class PkiSpec(Strict):
    cas: list[str] = Field(default_factory=list)
    service_account_key: bool = False
    certs: list[CertSpec] = Field(default_factory=list)


class KubeconfigSpec(Strict):
    name: str  # file <state_dir>/kubeconfigs/<name>.conf
    user: str  # CN of the client certificate
    groups: list[str] = Field(default_factory=list)
    server: str
    roles: list[str] | None = None


class Profile(Strict):
    name: str
    description: str = ""
    variables: dict[str, VariableDecl] = Field(default_factory=dict)
    pki: PkiSpec = Field(default_factory=PkiSpec)
    kubeconfigs: list[KubeconfigSpec] = Field(default_factory=list)
    components: list[Component] = Field(default_factory=list)

    @field_validator("name")
    @classmethod
    def _name_ok(cls, value: str) -> str:
        return _check_name(value)

    @model_validator(mode="after")
    def _references(self) -> Profile:
        names = [c.name for c in self.components]
        dupes = {n for n in names if names.count(n) > 1}
        if dupes:
            raise ValueError(f"duplicate component names: {sorted(dupes)}")
        for c in self.components:
            for dep in c.depends_on:
                if dep not in names:
                    raise ValueError(f"component {c.name!r} depends on unknown component {dep!r}")
        from app.bootstrap.graph import topo_order

        topo_order({c.name: c.depends_on for c in self.components})  # raises on a cycle
        for cert in self.pki.certs:
            if cert.ca not in self.pki.cas:
                raise ValueError(f"certificate {cert.name!r} names CA {cert.ca!r} not listed in pki.cas")
        return self


def format_errors(exc: ValidationError) -> list[dict[str, str]]:
    out = []
    for err in exc.errors():
        # Drop pydantic's discriminator tags from the path: users wrote `tasks[0]`, not `tasks.0.exec`.
        parts: list[str] = []
        for p in err["loc"]:
            if isinstance(p, int):
                parts.append(f"[{p}]")
            elif p in ("render", "container", "wait", "exec", "http", "https", "tcp", "command"):
                continue
            else:
                parts.append(("." if parts else "") + str(p))
        out.append({"field": "".join(parts) or "(document)", "message": err["msg"]})
    return out


def parse_profile(data: Any, *, source: str = "profile") -> Profile:
    """Validate a decoded document; :class:`InvalidArgument` names every bad field."""
    try:
        return Profile.model_validate(data)
    except ValidationError as exc:
        errors = format_errors(exc)
        text = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        raise InvalidArgument(f"invalid profile {source}: {text}", phase="profile",
                              details={"source": source, "errors": errors}) from exc


def decode(text: str, *, fmt: Literal["yaml", "toml"], source: str) -> Any:
    try:
        return tomllib.loads(text) if fmt == "toml" else yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise InvalidArgument(f"{source}: not valid {fmt.upper()}: {exc}", phase="profile",
                              details={"source": source}) from exc


def load_profile_file(path: Path) -> Profile:
    fmt: Literal["yaml", "toml"] = "toml" if path.suffix == ".toml" else "yaml"
    try:
        text = path.read_text()
    except OSError as exc:
        raise InvalidArgument(f"cannot read profile {path}: {exc.strerror}", phase="profile") from exc
    return parse_profile(decode(text, fmt=fmt, source=str(path)), source=str(path))
