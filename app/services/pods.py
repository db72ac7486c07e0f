"""Pod sandboxes: namespaces held by a holder process, CNI networking, DNS files, state in the DB.

State machine of one sandbox (mutated only here, under the pod's lock)::

    run() ──► READY ── holder alive, CNI attached, row written
                │  stop() (idempotent): containers stopped, CNI DEL, holder killed
                │  or the holder found dead (restart, status, list)
                ▼
             NOTREADY ──remove()──► gone (containers removed, files and row deleted)
    remove() of a READY pod stops it first; remove() of an unknown id is a no-op.

Disk::

    <state_dir>/pods/<id>/hostname, hosts, resolv.conf   bind-mounted into containers
    <run_dir>/pods/<id[:20]>.sock                        the holder's control socket
    <state_dir>/cni/results/...                          CNI ADD results (DEL after restart)

The holder (:mod:`app.services.pod_holder`) is exec'd through ``setsid -f unshare``,
so it is never forked from this threaded daemon and survives daemon restarts;
:meth:`PodService.restore` re-adopts live holders by pid + /proc start time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import shutil
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path

from sqlmodel import select

from app.errors import AlreadyExists, Category, FailedPrecondition, NotFound, Unavailable, VappError
from app.runtime.network import NetworkHook, dns
from app.runtime.network.cni import Attachment, CniClient, first_ips
from app.services import pod_process
from app.services.pod_types import NsMode, Pod, PodSpec, PodState
from app.state.db import Database
from app.state.models.pods import PodSandboxRow

log = logging.getLogger(__name__)
ContainerHook = Callable[[str], Awaitable[None]]
LIVENESS_TTL = 1.0


class PodService:
    def __init__(self, db: Database, state_dir: Path, run_dir: Path, cni: CniClient | None, *,
                 host_resolv: Path = Path("/etc/resolv.conf"), rootless: bool | None = None,
                 fallback: NetworkHook | None = None) -> None:
        self.db, self.cni = db, cni
        # Rootless pods cannot run CNI: the runtime's own pod network (pasta) attaches them instead.
        self.fallback = fallback
        self.files_root = Path(state_dir) / "pods"
        self.sock_root = Path(run_dir) / "pods"
        self.host_resolv = host_resolv
        self.rootless = pod_process.is_rootless() if rootless is None else rootless
        self._pods: dict[str, Pod] = {}
        self._names: dict[str, str] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._checked: dict[str, float] = {}  # pod id → when its holder was last seen alive
        # Set by wiring once the container service exists: stop/remove a pod's containers.
        self.stop_containers: ContainerHook | None = None
        self.remove_containers: ContainerHook | None = None

    # -- queries ------------------------------------------------------------------------
    def get(self, pod_id: str) -> Pod:
        pod = self._pods.get(pod_id) or self._by_prefix(pod_id)
        if pod is None:
            raise NotFound(f"pod sandbox {pod_id!r} not found", details={"pod_sandbox_id": pod_id})
        self._check_holder(pod)
        return pod

    def list(self, *, id_prefix: str = "", state: PodState | None = None,
             labels: Mapping[str, str] | None = None) -> list[Pod]:
        out = []
        for pod in self._pods.values():
            if id_prefix and not pod.id.startswith(id_prefix):
                continue
            self._check_holder(pod)
            if state is not None and pod.state is not state:
                continue
            if labels and any(pod.spec.labels.get(k) != v for k, v in labels.items()):
                continue
            out.append(pod)
        return out

    def network_status(self) -> tuple[bool, str]:
        """(NetworkReady, reason): CNI configured and installed, or rootless pods with lo only."""
        if self.rootless and self.fallback is not None:
            return True, ""
        if self.cni is None:
            return False, "no pod network configured (CNI disabled)"
        return self.cni.status()

    def pod_files(self, pod_id: str) -> dict[str, Path]:
        d = self.files_root / self.get(pod_id).id
        return {"hostname": d / "hostname", "hosts": d / "hosts", "resolv.conf": d / "resolv.conf"}

    # -- verbs ----------------------------------------------------------------------------
    async def run(self, spec: PodSpec) -> Pod:
        if spec.name_key in self._names:
            raise AlreadyExists(f"pod sandbox name {spec.name_key!r} is reserved by {self._names[spec.name_key]}",
                                details={"name": spec.name_key})
        pod_id = secrets.token_hex(32)
        self._names[spec.name_key] = pod_id
        try:
            async with self._lock(pod_id):
                pod = await self._start(pod_id, spec)
        except BaseException:
            self._names.pop(spec.name_key, None)
            raise
        self._pods[pod_id] = pod
        return pod

    async def _start(self, pod_id: str, spec: PodSpec) -> Pod:
        pod = Pod(pod_id, spec, PodState.READY, time.time_ns())
        use_cni = not spec.host_network and not self.rootless and self.cni is not None
        use_runtime = not spec.host_network and not use_cni and self.rootless and self.fallback is not None
        pod.network = "host" if spec.host_network else ("cni" if use_cni else "runtime" if use_runtime else "none")
        files = self.files_root / pod_id
        try:
            files.mkdir(parents=True, exist_ok=True)
            if spec.log_directory:
                Path(spec.log_directory).mkdir(parents=True, exist_ok=True)
            self._write_files(pod, files)
            holder = await pod_process.spawn(
                self._sock(pod_id), hostname=None if spec.host_network else (spec.hostname or None),
                net=not spec.host_network, ipc=spec.ipc is NsMode.POD, pid=spec.pid is NsMode.POD,
                uts=not spec.host_network, loopback=not use_cni and not spec.host_network,
                userns=self.rootless,
            )
            pod.holder_pid, pod.holder_start = holder
            pod.netns_path = "" if spec.host_network else f"/proc/{pod.holder_pid}/ns/net"
            if use_cni:
                assert self.cni is not None
                result = await self.cni.add(self._attachment(pod))
                ips = first_ips(result)
                pod.ip, pod.additional_ips = (ips[0] if ips else ""), ips[1:]
                self._write_files(pod, files)  # hosts now knows the pod IP
            elif use_runtime:
                assert self.fallback is not None
                ports = [{"host_port": p.host_port, "container_port": p.container_port, "protocol": p.protocol,
                          "host_ip": p.host_ip} for p in spec.ports if p.host_port > 0]
                att = await self.fallback.setup(pod.id, "pod", ports, pod.holder_pid,
                                                hostname=spec.hostname or spec.name)
                addrs = [str(a).split("/")[0] for a in att.get("addresses") or []]
                pod.ip, pod.additional_ips = (addrs[0] if addrs else ""), addrs[1:]
                self._write_files(pod, files)
            self._save(pod, new=True)
        except BaseException:
            # Undo what exists; the caller gets the original error, not a teardown one.
            await self._teardown(pod, remove_files=True, best_effort=True)
            raise
        return pod

    async def stop(self, pod_id: str) -> None:
        pod = self.get(pod_id)
        async with self._lock(pod.id):
            if self.stop_containers is not None:
                await self.stop_containers(pod.id)
            await self._teardown(pod, remove_files=False)
            pod.state = PodState.NOTREADY
            self._save(pod)

    async def remove(self, pod_id: str) -> None:
        try:
            pod = self.get(pod_id)
        except NotFound:
            return  # idempotent, as kubelet expects
        async with self._lock(pod.id):
            if self.stop_containers is not None and pod.state is PodState.READY:
                await self.stop_containers(pod.id)
            if self.remove_containers is not None:
                await self.remove_containers(pod.id)
            await self._teardown(pod, remove_files=True)
            with self.db.session() as s:
                row = s.get(PodSandboxRow, pod.id)
                if row is not None:
                    s.delete(row)
                    s.commit()
            self._pods.pop(pod.id, None)
            self._names.pop(pod.spec.name_key, None)
            self._locks.pop(pod.id, None)
            self._checked.pop(pod.id, None)

    async def dial(self, pod_id: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A connection to localhost:port inside the pod (port-forward)."""
        pod = self.get(pod_id)
        if pod.state is not PodState.READY:
            raise FailedPrecondition(f"pod sandbox {pod.id} is not ready")
        if pod.spec.host_network:
            return await asyncio.open_connection("127.0.0.1", port)
        sock = await asyncio.to_thread(pod_process.dial, self._sock(pod.id), port)
        return await asyncio.open_connection(sock=sock)

    async def restore(self) -> None:
        """At start: load every row, re-adopt live holders, settle pods whose holder died."""
        with self.db.session() as s:
            rows = list(s.exec(select(PodSandboxRow)))
        for row in rows:
            pod = Pod(row.id, PodSpec.from_json(row.spec_json), PodState(row.state), row.created_ns,
                      row.network, row.ip, [a for a in row.additional_ips.split(",") if a],
                      row.holder_pid, row.holder_start, row.netns_path)
            self._pods[pod.id], self._names[pod.spec.name_key] = pod, pod.id
            if pod.state is PodState.READY and not pod_process.alive(pod.holder_pid, pod.holder_start):
                log.warning("pod %s: holder %d is gone; marking NOTREADY", pod.id[:12], pod.holder_pid)
                with contextlib.suppress(VappError):
                    await self._teardown(pod, remove_files=False)
                pod.state = PodState.NOTREADY
                self._save(pod)

    # -- internals ----------------------------------------------------------------------------
    def _by_prefix(self, prefix: str) -> Pod | None:
        if len(prefix) < 4:
            return None
        hits = [p for i, p in self._pods.items() if i.startswith(prefix)]
        return hits[0] if len(hits) == 1 else None

    def _lock(self, pod_id: str) -> asyncio.Lock:
        return self._locks.setdefault(pod_id, asyncio.Lock())

    def _sock(self, pod_id: str) -> Path:
        return self.sock_root / f"{pod_id[:20]}.sock"

    def _check_holder(self, pod: Pod) -> None:
        """A READY pod whose holder died is NOTREADY (its namespaces are gone).

        Checked at most once per ``LIVENESS_TTL`` per pod: kubelet lists every second and
        reading /proc for hundreds of pods each time would dominate the answer."""
        now = time.monotonic()
        if now - self._checked.get(pod.id, 0.0) < LIVENESS_TTL:
            return
        self._checked[pod.id] = now
        if pod.state is PodState.READY and not pod_process.alive(pod.holder_pid, pod.holder_start):
            pod.state = PodState.NOTREADY
            self._save(pod)

    def _attachment(self, pod: Pod) -> Attachment:
        s = pod.spec
        args = [("K8S_POD_NAMESPACE", s.namespace), ("K8S_POD_NAME", s.name),
                ("K8S_POD_INFRA_CONTAINER_ID", pod.id), ("K8S_POD_UID", s.uid)]
        ports = [{"hostPort": p.host_port, "containerPort": p.container_port, "protocol": p.protocol,
                  "hostIP": p.host_ip} for p in s.ports if p.host_port > 0]
        caps: dict[str, object] = {"portMappings": ports} if ports else {}
        return Attachment(pod.id, pod.netns_path, "eth0", args, caps)

    async def _teardown(self, pod: Pod, *, remove_files: bool, best_effort: bool = False) -> None:
        """Undo whatever exists of a pod's runtime side; safe to repeat.

        A failed CNI DEL stops here (the pod stays as it is, so a retry redoes all of it),
        unless ``best_effort`` (rolling back a failed start): then everything else still goes.
        """
        alive = pod_process.alive(pod.holder_pid, pod.holder_start)
        if pod.network == "cni" and self.cni is not None:
            try:
                await self.cni.delete(pod.id, "eth0", netns=pod.netns_path if alive else "")
            except VappError as exc:
                if not best_effort:
                    raise Unavailable(f"pod {pod.id[:12]}: CNI DEL failed: {exc.message}",
                                      category=Category.NETWORK) from exc
                log.warning("pod %s: CNI DEL during rollback failed: %s", pod.id[:12], exc.message)
                self.cni.forget(pod.id, "eth0")
        if pod.network == "runtime" and self.fallback is not None:
            try:
                await self.fallback.teardown(pod.id)
            except VappError as exc:
                if not best_effort:
                    raise
                log.warning("pod %s: network teardown during rollback failed: %s", pod.id[:12], exc.message)
        if alive:
            await pod_process.kill(pod.holder_pid, pod.holder_start)
        pod.holder_pid = pod.holder_start = 0
        pod.netns_path = ""
        with contextlib.suppress(FileNotFoundError):
            self._sock(pod.id).unlink()
        if remove_files:
            shutil.rmtree(self.files_root / pod.id, ignore_errors=True)

    def _write_files(self, pod: Pod, files: Path) -> None:
        s = pod.spec
        try:
            host_text = self.host_resolv.read_text()
        except OSError:
            host_text = ""
        hostname = s.hostname or s.name
        if s.host_network:
            import socket
            hostname = socket.gethostname()
        dns.write_in_place(files / "hostname", hostname + "\n")
        resolv = dns.build_resolv_conf(host_text, servers=s.dns_servers, search=s.dns_searches,
                                       options=s.dns_options, keep_loopback=s.host_network)
        dns.write_in_place(files / "resolv.conf", resolv)
        ips: Iterable[str] = [pod.ip, *pod.additional_ips] if pod.ip else []
        dns.write_in_place(files / "hosts", dns.build_hosts(hostname, ips))

    def _save(self, pod: Pod, *, new: bool = False) -> None:
        s = pod.spec
        row = PodSandboxRow(
            id=pod.id, name_key=s.name_key, name=s.name, namespace=s.namespace, uid=s.uid, attempt=s.attempt,
            state=pod.state.value, created_ns=pod.created_ns, runtime_handler=s.runtime_handler,
            spec_json=s.to_json(), network=pod.network, ip=pod.ip, additional_ips=",".join(pod.additional_ips),
            holder_pid=pod.holder_pid, holder_start=pod.holder_start, netns_path=pod.netns_path,
        )
        with self.db.session() as session:
            if new:
                session.add(row)
            else:
                session.merge(row)
            session.commit()
