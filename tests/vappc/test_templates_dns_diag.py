"""Templates into a rootfs, the DNS hosts file, and node diagnostics (real files, real netlink)."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from app.errors import Category, InvalidArgument
from app.runtime.network.diag import network_diagnostics
from app.runtime.templates import render, render_into_rootfs, resolve_in_rootfs
from app.services.app_types import DnsRecord
from app.services.diagnostics import Diagnostics
from app.services.dns import DnsRecords


def test_render_strict_names_template_and_variable() -> None:
    assert render("port={{ port }}\n", {"port": "80"}) == "port=80\n"
    with pytest.raises(InvalidArgument) as info:
        render("a={{ a }} b={{ missing }}", {"a": "1"}, "config_templates[0] (/etc/x)")
    assert "config_templates[0] (/etc/x)" in info.value.message and "'missing'" in info.value.message
    assert info.value.category is Category.CONFIG and info.value.phase == "render_templates"
    with pytest.raises(InvalidArgument, match="syntax error on line 1"):
        render("{% if %}", {})
    with pytest.raises(InvalidArgument):
        render("{{ a.__class__.__mro__ }}", {"a": "x"})  # sandboxed


def test_render_into_rootfs_writes_nothing_on_error(tmp_path: Path) -> None:
    rootfs = tmp_path / "rootfs"
    (rootfs / "etc").mkdir(parents=True)
    with pytest.raises(InvalidArgument, match="'nope'"):
        render_into_rootfs(rootfs, [("ok", "/etc/a.conf"), ("{{ nope }}", "/etc/b.conf")], {})
    assert sorted(os.listdir(rootfs / "etc")) == []
    written = render_into_rootfs(rootfs, [("v={{ v }}", "/etc/app/a.conf")], {"v": "1"})
    assert written == [rootfs / "etc" / "app" / "a.conf"]
    assert (rootfs / "etc/app/a.conf").read_text() == "v=1"


def test_destinations_cannot_escape_the_rootfs(tmp_path: Path) -> None:
    rootfs = tmp_path / "rootfs"
    outside = tmp_path / "outside"
    outside.mkdir()
    (rootfs / "etc").mkdir(parents=True)
    (rootfs / "etc" / "evil").symlink_to(outside)  # absolute link: rootfs-relative
    (rootfs / "up").symlink_to("../../..")
    (rootfs / "etc" / "rel").symlink_to("../var/lib")
    assert resolve_in_rootfs(rootfs, "/etc/evil/x") == rootfs.resolve() / str(outside).lstrip("/") / "x"
    assert resolve_in_rootfs(rootfs, "/up/etc/passwd") == rootfs.resolve() / "etc/passwd"
    assert resolve_in_rootfs(rootfs, "/etc/rel/f") == rootfs.resolve() / "var/lib/f"
    render_into_rootfs(rootfs, [("x", "/etc/evil/file"), ("y", "/up/z")], {})
    assert list(outside.iterdir()) == []
    assert (rootfs / "z").read_text() == "y"
    with pytest.raises(InvalidArgument, match=r"'\.\.'"):
        render_into_rootfs(rootfs, [("x", "/etc/../../x")], {})
    (rootfs / "loop").symlink_to("/loop")
    with pytest.raises(InvalidArgument, match="too many symlinks"):
        render_into_rootfs(rootfs, [("x", "/loop/x")], {})


async def test_dns_hosts_file_atomic_and_validated(tmp_path: Path) -> None:
    hosts = tmp_path / "dns" / "hosts"
    dns = DnsRecords(hosts)
    recs = [DnsRecord(ip="10.0.0.5", hostname="DB.internal."), DnsRecord(ip="fd00::1", hostname="v6.x")]
    assert await dns.update(recs) == 2
    lines = [ln for ln in hosts.read_text().splitlines() if not ln.startswith("#")]
    assert lines == ["10.0.0.5 db.internal", "fd00::1 v6.x"]
    before = hosts.read_text()
    for bad in [DnsRecord(ip="10.0.0.300", hostname="a"), DnsRecord(ip="1.2.3.4", hostname="a\nb"),
                DnsRecord(ip="1.2.3.4", hostname="-bad.x"), DnsRecord(ip="1.2.3.4", hostname="a b"),
                DnsRecord(ip="1.2.3.4", hostname="x" * 64), DnsRecord(ip="1.2.3.4\n", hostname="a")]:
        with pytest.raises(InvalidArgument, match=r"records\[1\]"):
            await dns.update([recs[0], bad])
    assert hosts.read_text() == before
    assert [p.name for p in hosts.parent.iterdir()] == ["hosts"]  # no temp files left
    assert await dns.update([]) == 0


async def test_diagnostics_real_facts_and_item_timeout(tmp_path: Path) -> None:
    diag = Diagnostics(tmp_path, network_diagnostics)

    async def containers() -> str:
        return "app-1 Running"

    diag.containers = containers
    facts = await diag.run()
    assert {"kernel", "interfaces", "routes", "namespaces", "tun", "cgroups", "disk", "containers"} <= set(facts)
    assert "lo" in facts["interfaces"] and "127.0.0.1/8" in facts["interfaces"]
    assert "/dev/net/tun" in facts["tun"] and "GiB free" in facts["disk"]
    assert "layout:" in facts["cgroups"] and "user" in facts["namespaces"]

    class Slow(Diagnostics):
        def items(self):  # type: ignore[no-untyped-def]
            return {"slow": lambda: time.sleep(0.8) or "late", "fast": lambda: "ok"}

    slow = Slow(tmp_path, None, item_timeout=0.2)
    started = asyncio.get_running_loop().time()
    assert await slow.run() == {"fast": "ok", "slow": "timed out after 0.2s"}
    assert asyncio.get_running_loop().time() - started < 1.5
