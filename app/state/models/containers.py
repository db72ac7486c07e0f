"""Container state: one row per container the runtime service manages.

Schema::

    rt_container  id PK │ name (unique) │ runtime │ bundle │ rootfs │ log_path │ image
                  status (created│running│exited│unknown) │ pid │ pid_start │ shim_pid │ shim_start
                  exit_code │ created_at │ started_at │ finished_at │ network │ stop_signal
                  labels (JSON) │ annotations (JSON) │ spec (JSON: the ContainerSpec)

The row is the service's memory; liveness is always re-read from the processes
(pid + start time) and the shim's exit record, so a stale ``status`` is corrected
by ``restore()`` after a restart.
"""

from __future__ import annotations

from sqlmodel import Field, SQLModel


class ContainerRow(SQLModel, table=True):
    __tablename__ = "rt_container"

    id: str = Field(primary_key=True, max_length=200)
    name: str = Field(index=True, unique=True, max_length=253)
    runtime: str = "native"
    bundle: str
    rootfs: str
    log_path: str
    image: str = ""
    status: str = "created"
    pid: int | None = None
    pid_start: int | None = None
    shim_pid: int | None = None
    shim_start: int | None = None
    exit_code: int | None = None
    created_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    network: str = "host"
    stop_signal: str = "SIGTERM"
    labels: str = "{}"
    annotations: str = "{}"
    spec: str = "{}"
