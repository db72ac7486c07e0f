"""A stand-in for the API server in front of our streaming server, so real kubectl drives it.

kubectl exec / port-forward talk to ``/api/v1/namespaces/<ns>/pods/<name>/{exec,portforward}``
on the API server, which (in a real cluster) proxies the upgraded connection to the kubelet,
which redirects to the runtime's streaming URL. Here: discovery and the pod object are canned,
and an exec/portforward request is turned into a token URL of our :class:`StreamServer` (from
the query, as kubelet would build the CRI request) and the raw connection is piped to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from urllib.parse import parse_qs, urlsplit

from app.api.cri.streaming.portforward import PortForwardRequest
from app.api.cri.streaming.remotecommand import CommandRequest
from app.api.cri.streaming.server import StreamServer

DISCOVERY = {
    "/api": {"kind": "APIVersions", "versions": ["v1"],
             "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]},
    "/apis": {"kind": "APIGroupList", "apiVersion": "v1", "groups": []},
    "/api/v1": {"kind": "APIResourceList", "groupVersion": "v1", "resources": [
        {"name": "pods", "singularName": "pod", "namespaced": True, "kind": "Pod", "verbs": ["get", "list"]},
        {"name": "pods/exec", "singularName": "", "namespaced": True, "kind": "PodExecOptions",
         "verbs": ["create", "get"]},
        {"name": "pods/portforward", "singularName": "", "namespaced": True, "kind": "PodPortForwardOptions",
         "verbs": ["create", "get"]}]},
    "/version": {"major": "1", "minor": "32", "gitVersion": "v1.32.0"},
}


def pod_object(name: str, namespace: str) -> dict[str, object]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace},
            "spec": {"containers": [{"name": "main", "image": "busybox"}]},
            "status": {"phase": "Running"}}


class KubeProxy:
    def __init__(self, streams: StreamServer, container_id: str = "main", pod_id: str = "pod") -> None:
        self.streams = streams
        self.container_id, self.pod_id = container_id, pod_id
        self.port = 0
        self.seen: list[str] = []
        self.upgrades: list[str] = []  # the Upgrade header of each proxied stream request
        self._server: asyncio.base_events.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                method, target, _ = head.split(b"\r\n", 1)[0].decode().split(" ", 2)
                url = urlsplit(target)
                self.seen.append(f"{method} {url.path}")
                if url.path.endswith(("/exec", "/portforward")):
                    self.upgrades += [line.split(":", 1)[1].strip().lower() for line in head.decode().split("\r\n")
                                      if line.lower().startswith("upgrade:")]
                    await self._pipe(head, url.path, parse_qs(url.query), reader, writer)
                    return
                length = 0
                for line in head.decode().split("\r\n"):
                    if line.lower().startswith("content-length:"):
                        length = int(line.split(":", 1)[1])
                if length:
                    await reader.readexactly(length)
                parts = url.path.strip("/").split("/")
                if url.path in DISCOVERY:
                    body = DISCOVERY[url.path]
                elif len(parts) == 6 and parts[:2] == ["api", "v1"] and parts[4] == "pods":
                    body = pod_object(parts[5], parts[3])
                else:
                    writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                    await writer.drain()
                    continue
                data = json.dumps(body).encode()
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             + f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _pipe(self, head: bytes, path: str, query: dict[str, list[str]], reader: asyncio.StreamReader,
                    writer: asyncio.StreamWriter) -> None:
        flag = lambda key: query.get(key, ["false"])[0] in ("true", "1")  # noqa: E731
        request: CommandRequest | PortForwardRequest
        if path.endswith("/exec"):
            request = CommandRequest("exec", self.container_id, tuple(query.get("command", [])), flag("tty"),
                                     flag("stdin"), flag("stdout"), flag("stderr"))
        else:
            request = PortForwardRequest(self.pod_id, tuple(int(p) for p in query.get("ports", [])))
        target = urlsplit(self.streams.url_for(request))
        up_r, up_w = await asyncio.open_connection(target.hostname, target.port)
        first, rest = head.split(b"\r\n", 1)
        method = first.split(b" ")[0]
        up_w.write(method + b" " + target.path.encode() + b" HTTP/1.1\r\n" + rest)

        async def copy(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while chunk := await src.read(65536):
                    dst.write(chunk)
                    await dst.drain()
            with contextlib.suppress(OSError, RuntimeError):
                dst.write_eof()

        await asyncio.gather(copy(reader, up_w), copy(up_r, writer))
        up_w.close()
