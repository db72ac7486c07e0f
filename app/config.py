"""One typed settings object for the whole daemon.

Sources, highest first: explicit overrides (CLI flags) > ``VAPP_*`` environment
variables (nested sections with ``__``: ``VAPP_BLOB__LISTEN``) > the TOML file
given with ``--config`` > defaults. Defaults work unconfigured for root and for
an unprivileged user:

==========  =====================  ===========================================
what        root                   unprivileged user
==========  =====================  ===========================================
state_dir   /var/lib/vapp          $XDG_DATA_HOME/vapp-core (~/.local/share/…)
run_dir     /run/vapp              $XDG_RUNTIME_DIR/vapp, else /tmp/vapp-<uid>
vappc       /tmp/vappc             /tmp/vappc
==========  =====================  ===========================================

Each engine owns one section model below; add fields to your own section.
"""

from __future__ import annotations

import os
import tomllib
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from app.errors import InvalidArgument


def _default_state_dir() -> Path:
    if os.geteuid() == 0:
        return Path("/var/lib/vapp")
    xdg = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(xdg) / "vapp-core"


def _default_run_dir() -> Path:
    if os.geteuid() == 0:
        return Path("/run/vapp")
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.access(xdg, os.W_OK):
        return Path(xdg) / "vapp"
    return Path(f"/tmp/vapp-{os.geteuid()}")


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class UpstreamSettings(Section):
    """One upstream registry (by host name as clients write it, e.g. ``docker.io``)."""

    url: str | None = None  # default https://<host>; http:// allowed for local registries
    mirrors: list[str] = Field(default_factory=list)
    username: str | None = None
    password: SecretStr | None = None
    token: SecretStr | None = None
    docker_config: Path | None = None  # a docker config.json to take the auth entry from
    ca_bundle: Path | None = None
    insecure: bool = False
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    tag_ttl_seconds: float = 300.0
    repository_tag_ttl: dict[str, float] = Field(default_factory=dict)  # repository -> TTL override


class BlobSettings(Section):
    enabled: bool = True
    listen: str = "127.0.0.1:5050"
    tls_cert: Path | None = None
    tls_key: Path | None = None
    htpasswd: Path | None = None
    default_registry: str = "docker.io"
    upstreams: dict[str, UpstreamSettings] = Field(default_factory=dict)
    quota_bytes: int = 50 * 1024**3
    ttl_seconds: float | None = None
    prepull: list[str] = Field(default_factory=list)
    prepull_concurrency: int = 2


class RuntimeSettings(Section):
    default_runtime: Literal["native", "crun", "runc"] = "native"
    snapshotter: Literal["auto", "overlay", "fuse-overlayfs", "copy"] = "auto"
    pull_concurrency: int = 3
    platform: str | None = None  # os/arch[/variant]; default: this node's
    stop_grace_seconds: float = 10.0
    log_max_bytes: int = 10 * 1024**2
    log_max_files: int = 3
    # Parent cgroup of containers with limits. Rootless: point it at a delegated subtree
    # (a dir the user owns in each controller); otherwise limits are skipped with a warning.
    cgroup_parent: str = "/vapp"
    subordinate_ids: bool = True  # rootless: map /etc/subuid ranges (newuidmap) besides the user


class NetworkSettings(Section):
    bridge: str = "vapp0"
    subnet: str = "10.88.0.0/16"
    dns_servers: list[str] = Field(default_factory=list)
    dns_search: list[str] = Field(default_factory=list)
    dns_options: list[str] = Field(default_factory=list)
    extra_hosts: dict[str, str] = Field(default_factory=dict)
    publish_address: str = "127.0.0.1"
    pod_driver: Literal["auto", "bridge", "usermode"] = "auto"  # auto: bridge as root, else usermode
    usermode_helper: Literal["auto", "pasta", "slirp4netns"] = "auto"  # auto: pasta, else slirp4netns
    nft_table: str = "vapp"  # our own `table inet <name>`; reset deletes it whole
    ipv6: bool = False  # pasta: also IPv6 (off: a v4-only node leaves no v6 listeners behind)
    mtu: int = 1500


class CriSettings(Section):
    enabled: bool = True
    socket: Path | None = None  # default <run_dir>/cri.sock
    cni_conf_dir: Path = Path("/etc/cni/net.d")
    cni_bin_dirs: list[Path] = Field(default_factory=lambda: [Path("/usr/lib/cni"), Path("/opt/cni/bin")])
    sandbox_image: str | None = None
    stream_address: str = "127.0.0.1"
    stream_port: int = 0


class VappcSettings(Section):
    socket: Path = Path("/tmp/vappc")
    vsock_port: int | None = None
    max_line_bytes: int = 1024 * 1024
    allowed_uids: list[int] = Field(default_factory=list)  # empty: the daemon's uid and root
    allowed_gids: list[int] = Field(default_factory=list)
    dns_hosts_file: Path | None = None  # default <state_dir>/dns/hosts


class BootstrapSettings(Section):
    intents_dir: Path | None = None  # default <state_dir>/intents
    reconcile_interval_seconds: float = 10.0
    cert_renew_days: Annotated[int, Field(ge=0, le=180)] = 90  # leaves live 365 days
    enabled: bool = True
    driver: Literal["auto", "container", "host"] = "auto"  # auto: containers when the service is wired
    profile_dirs: list[Path] = Field(default_factory=list)  # searched before the built-in profiles
    node_name: str | None = None  # default: the host name, lowercased
    node_ip: str = "127.0.0.1"  # the address components advertise
    backoff_base_seconds: float = 1.0
    backoff_max_seconds: float = 300.0


class Settings(BaseSettings):
    """The daemon's configuration. Paths left ``None`` are derived in :meth:`resolved`."""

    model_config = SettingsConfigDict(env_prefix="VAPP_", env_nested_delimiter="__", extra="forbid")

    state_dir: Path = Field(default_factory=_default_state_dir)
    run_dir: Path = Field(default_factory=_default_run_dir)
    database_url: str | None = None  # default sqlite:///<state_dir>/vapp.db
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["text", "json"] = "text"
    admin_listen: str = "127.0.0.1:8420"
    admin_token: SecretStr | None = None  # default: generated into <state_dir>/admin-token
    socket_group: str | None = None
    socket_mode: int = 0o660
    shutdown_grace_seconds: float = 10.0

    blob: BlobSettings = Field(default_factory=BlobSettings)
    runtime: RuntimeSettings = Field(default_factory=RuntimeSettings)
    network: NetworkSettings = Field(default_factory=NetworkSettings)
    cri: CriSettings = Field(default_factory=CriSettings)
    vappc: VappcSettings = Field(default_factory=VappcSettings)
    bootstrap: BootstrapSettings = Field(default_factory=BootstrapSettings)

    @field_validator("admin_listen")
    @classmethod
    def _check_listen(cls, value: str) -> str:
        parse_host_port(value)
        return value

    @field_validator("socket_mode")
    @classmethod
    def _check_mode(cls, value: int) -> int:
        if not 0 <= value <= 0o777:
            raise ValueError("must be a file mode between 0 and 0o777")
        return value

    # --- derived paths ---------------------------------------------------------------
    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.state_dir / 'vapp.db'}"

    @property
    def cri_socket(self) -> Path:
        return self.cri.socket or self.run_dir / "cri.sock"

    @property
    def content_dir(self) -> Path:
        return self.state_dir / "content"

    @property
    def dns_hosts_file(self) -> Path:
        return self.vappc.dns_hosts_file or self.state_dir / "dns" / "hosts"

    @property
    def intents_dir(self) -> Path:
        return self.bootstrap.intents_dir or self.state_dir / "intents"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _TomlValues(settings_cls, _FILE_VALUES.get() or {}))


def parse_host_port(value: str) -> tuple[str, int]:
    """Split ``host:port`` (``[v6]:port`` too) and check the port."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"{value!r} is not HOST:PORT")
    return host.strip("[]") or "127.0.0.1", int(port_text)


class _TomlValues(PydanticBaseSettingsSource):
    """The ``--config`` file's values, one source under the environment.

    pydantic-settings deep-merges its sources, so ``VAPP_BLOB__LISTEN`` overrides
    one key of a ``[blob]`` table without discarding the table's other keys.
    """

    def __init__(self, settings_cls: type[BaseSettings], values: dict[str, Any]) -> None:
        super().__init__(settings_cls)
        self.values = values

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self.values.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return self.values


_FILE_VALUES: ContextVar[dict[str, Any] | None] = ContextVar("vapp_config_file_values", default=None)


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build the settings (overrides > environment > file > defaults); :class:`InvalidArgument` names the bad key."""
    file_values: dict[str, Any] = {}
    if config_file is not None:
        try:
            file_values = tomllib.loads(Path(config_file).read_text())
        except OSError as exc:
            raise InvalidArgument(f"config file {config_file}: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise InvalidArgument(f"config file {config_file}: {exc}") from exc
    token = _FILE_VALUES.set(file_values)
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        raise InvalidArgument(format_validation_error(exc), details={"errors": _error_list(exc)}) from exc
    finally:
        _FILE_VALUES.reset(token)


def _error_list(exc: ValidationError) -> list[dict[str, str]]:
    return [{"key": ".".join(str(p) for p in err["loc"]), "message": err["msg"]} for err in exc.errors()]


def format_validation_error(exc: ValidationError) -> str:
    lines = [f"{e['key']}: {e['message']}" for e in _error_list(exc)]
    return "invalid configuration: " + "; ".join(lines)
