"""CRI pod sandboxes (one row per sandbox; the service keeps an in-memory index for List calls).

Table ``cri_pod``::

    id            64-hex sandbox id (primary key)
    name_key      "<name>_<namespace>_<uid>_<attempt>"  unique: one sandbox per kubelet attempt
    state         "ready" | "notready"                  (READY → NOTREADY on stop; row deleted on remove)
    created_ns    creation time, ns since the epoch
    spec_json     the PodSpec as JSON (labels, annotations, dns, ports, namespaces, ...)
    network       "cni" | "host" | "runtime" (rootless: the runtime's pod network) | "none"
    ip, additional_ips (comma separated)
    holder_pid, holder_start   the namespace holder (pid + /proc starttime, so a reused pid is
                               never mistaken for it after a restart); 0 when stopped
    netns_path    /proc/<holder>/ns/net while running, "" for host network
"""

from __future__ import annotations

from sqlmodel import Field, SQLModel


class PodSandboxRow(SQLModel, table=True):
    __tablename__ = "cri_pod"

    id: str = Field(primary_key=True, max_length=64)
    name_key: str = Field(max_length=1024, unique=True)
    name: str
    namespace: str
    uid: str
    attempt: int = 0
    state: str = Field(max_length=16)
    created_ns: int
    runtime_handler: str = ""
    spec_json: str
    network: str = Field(default="cni", max_length=16)
    ip: str = ""
    additional_ips: str = ""
    holder_pid: int = 0
    holder_start: int = 0
    netns_path: str = ""
