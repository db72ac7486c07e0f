"""UpdateDnsRecords: the hosts file a CoreDNS sidecar (``hosts`` plugin) serves.

The whole record set is replaced on each update (the agent sends the full
list). The file is written atomically so CoreDNS's reload never reads half of
it::

    <state_dir>/dns/hosts             # managed by vapp-core: UpdateDnsRecords
    10.0.0.5 db.internal              # one line per record, in request order
    <state_dir>/dns/.hosts.tmp-<pid>  # fsync'd, then renamed over hosts; dir fsync'd

Validation happens before anything is touched: a bad record rejects the whole
update (Config error naming the record) and the previous file stays.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import re
from pathlib import Path

from app.errors import Category, InvalidArgument, Unavailable
from app.services.app_types import DnsRecord

_LABEL = re.compile(r"^(?!-)[A-Za-z0-9_-]{1,63}(?<!-)$")
MAX_RECORDS = 10_000
HEADER = "# managed by vapp-core: UpdateDnsRecords (replaced atomically on every update)\n"


def validate_record(index: int, record: DnsRecord) -> tuple[str, str]:
    """Return the canonical (ip, hostname) or raise naming the record."""
    where = f"records[{index}]"
    try:
        ip = ipaddress.ip_address(record.ip)
    except ValueError:
        raise InvalidArgument(f"{where}: {record.ip!r} is not an IP address", phase="dns") from None
    host = record.hostname.rstrip(".").lower()
    if not host or len(host) > 253 or any(c.isspace() for c in record.hostname):
        raise InvalidArgument(f"{where}: {record.hostname!r} is not a valid hostname", phase="dns")
    for label in host.split("."):
        if not _LABEL.match(label):
            raise InvalidArgument(
                f"{where}: {record.hostname!r} is not a valid hostname (label {label!r})", phase="dns"
            )
    return str(ip), host


def render_hosts(records: list[DnsRecord]) -> str:
    if len(records) > MAX_RECORDS:
        raise InvalidArgument(f"at most {MAX_RECORDS} records per update", phase="dns")
    lines = [HEADER]
    for index, record in enumerate(records):
        ip, host = validate_record(index, record)
        lines.append(f"{ip} {host}\n")
    return "".join(lines)


def write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise Unavailable(f"cannot write {path}: {exc.strerror}", category=Category.IO, phase="dns") from exc


class DnsRecords:
    """Owns one hosts file; updates are serialised so two writers never interleave."""

    def __init__(self, hosts_file: Path) -> None:
        self.hosts_file = hosts_file
        self._lock = asyncio.Lock()

    async def update(self, records: list[DnsRecord]) -> int:
        text = render_hosts(records)  # validate everything before touching the file
        async with self._lock:
            await asyncio.to_thread(write_atomically, self.hosts_file, text)
        return len(records)
