"""Network state: one attachment per container, and the IP leases of bridge networks.

Schema::

    net_attachment  container_id PK │ mode │ driver │ network │ netns │ netns_ino │ pid
                    addresses (JSON list of CIDRs) │ gateway │ ports (JSON) │ helper_pids (JSON)
                    shared_with │ hostname │ created_at
    net_lease       (network, address) PK │ container_id (indexed) │ created_at

The lease's primary key is what makes "no duplicate address, even after a restart"
true: a second insert of a live address fails in the database, not by luck. A
lease lives exactly as long as its attachment row; the start-up reconcile drops
both when the namespace they point at (``netns_ino`` of ``netns``/``pid``) is gone.
"""

from __future__ import annotations

from sqlmodel import Field, SQLModel


class NetAttachment(SQLModel, table=True):
    __tablename__ = "net_attachment"

    container_id: str = Field(primary_key=True, max_length=200)
    mode: str
    driver: str
    network: str = ""
    netns: str | None = None
    netns_ino: int | None = None
    pid: int | None = None
    addresses: str = "[]"
    gateway: str | None = None
    ports: str = "[]"
    helper_pids: str = "[]"
    shared_with: str | None = None
    hostname: str | None = None
    created_at: float = 0.0


class NetLease(SQLModel, table=True):
    __tablename__ = "net_lease"

    network: str = Field(primary_key=True, max_length=64)
    address: str = Field(primary_key=True, max_length=64)
    container_id: str = Field(index=True, max_length=200)
    created_at: float = 0.0
