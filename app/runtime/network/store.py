"""The network part's repository: attachments and IP leases in the database (see
:mod:`app.state.models.network` for the schema) plus the pure address picker.

Allocation is "lowest free address after the gateway", decided and inserted in one
transaction; the (network, address) primary key turns a race or a stale view into an
IntegrityError, which is retried with a fresh view, so two live containers never share
an address, before or after a restart.
"""

from __future__ import annotations

import ipaddress
import json
import time
from collections.abc import Iterable
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlmodel import col, delete, select

from app.errors import Category, ResourceExhausted
from app.state.db import Database
from app.state.models.network import NetAttachment, NetLease


def gateway_of(subnet: str) -> str:
    """The first host address of ``subnet`` is the bridge's (``10.88.0.1`` for 10.88.0.0/16)."""
    return str(next(ipaddress.ip_network(subnet).hosts()))


def pick_address(subnet: str, used: Iterable[str]) -> str | None:
    """The lowest free host address after the gateway, or None when the subnet is full."""
    net = ipaddress.ip_network(subnet)
    taken = {ipaddress.ip_address(a) for a in used}
    taken.add(ipaddress.ip_address(gateway_of(subnet)))
    for host in net.hosts():
        if host not in taken:
            return str(host)
    return None


def dump(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


class NetworkStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    # --- attachments ----------------------------------------------------------------
    def save(self, att: NetAttachment) -> None:
        with self.db.session() as s:
            s.merge(att)
            s.commit()

    def get(self, container_id: str) -> NetAttachment | None:
        with self.db.session() as s:
            return s.get(NetAttachment, container_id)

    def all(self) -> list[NetAttachment]:
        with self.db.session() as s:
            return list(s.exec(select(NetAttachment).order_by(col(NetAttachment.created_at))))

    def forget(self, container_id: str) -> None:
        """Drop the attachment and its leases in one transaction."""
        with self.db.session() as s:
            s.exec(delete(NetLease).where(col(NetLease.container_id) == container_id))  # type: ignore[call-overload]
            s.exec(delete(NetAttachment).where(col(NetAttachment.container_id) == container_id))  # type: ignore[call-overload]
            s.commit()

    # --- leases -----------------------------------------------------------------------
    def allocate(self, network: str, subnet: str, container_id: str) -> str:
        """Lease an address (an existing lease of the same container is returned again)."""
        for _ in range(64):
            with self.db.session() as s:
                mine = s.exec(select(NetLease).where(NetLease.network == network,
                                                     NetLease.container_id == container_id)).first()
                if mine is not None:
                    return mine.address
                used = s.exec(select(NetLease.address).where(NetLease.network == network)).all()
                address = pick_address(subnet, used)
                if address is None:
                    raise ResourceExhausted(f"no free address left in {subnet} ({network})",
                                            category=Category.NETWORK)
                s.add(NetLease(network=network, address=address, container_id=container_id,
                               created_at=time.time()))
                try:
                    s.commit()
                    return address
                except IntegrityError:
                    s.rollback()  # someone took it between our read and write: look again
        raise ResourceExhausted(f"could not lease an address in {subnet}", category=Category.NETWORK)

    def release(self, container_id: str) -> None:
        with self.db.session() as s:
            s.exec(delete(NetLease).where(col(NetLease.container_id) == container_id))  # type: ignore[call-overload]
            s.commit()

    def leases(self, network: str | None = None) -> list[NetLease]:
        with self.db.session() as s:
            query = select(NetLease)
            if network is not None:
                query = query.where(NetLease.network == network)
            return list(s.exec(query))
