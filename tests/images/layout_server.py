"""A read-only distribution API over an OCI layout dir, with fault knobs.

Real HTTP on loopback (port 0). ``corrupt``: digests whose bytes are served with
one byte flipped; ``rate``: bytes/second per blob response (to interrupt pulls
mid-layer); ``served``: bytes sent per digest; ``Range`` requests honoured.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from app.oci.manifest import sha256_digest


class LayoutServer:
    def __init__(
        self, layout: Path, *, corrupt: set[str] | None = None, rate: float | None = None, port: int = 0
    ) -> None:
        self.layout = layout
        self.corrupt = corrupt or set()
        self.rate = rate
        self.served: dict[str, int] = {}
        self.ranges: list[str] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_a: object) -> None:
                pass

            def do_GET(self) -> None:
                owner._get(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.httpd.server_address[1]}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _blob(self, digest: str) -> Path:
        return self.layout / "blobs" / "sha256" / digest.removeprefix("sha256:")

    def _get(self, h: BaseHTTPRequestHandler) -> None:
        parts = h.path.split("/")
        if h.path == "/v2/":
            return self._send(h, 200, b"{}", "application/json")
        if len(parts) < 5 or parts[1] != "v2":
            return self._send(h, 404, b"{}", "application/json")
        kind, ref = parts[-2], parts[-1]
        if kind == "manifests":
            if not ref.startswith("sha256:"):
                index = json.loads((self.layout / "index.json").read_text())
                hits = [
                    m
                    for m in index["manifests"]
                    if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == ref
                ]
                if not hits:
                    return self._send(h, 404, b"{}", "application/json")
                ref = hits[0]["digest"]
            path = self._blob(ref)
            if not path.exists():
                return self._send(h, 404, b"{}", "application/json")
            body = path.read_bytes()
            mt = json.loads(body).get("mediaType", "application/vnd.oci.image.manifest.v1+json")
            return self._send(h, 200, body, mt)
        path = self._blob(ref)
        if kind != "blobs" or not path.exists():
            return self._send(h, 404, b"{}", "application/json")
        data = bytearray(path.read_bytes())
        if ref in self.corrupt:
            data[len(data) // 2] ^= 0xFF
        start = 0
        rng = h.headers.get("Range")
        status = 200
        if rng and rng.startswith("bytes="):
            self.ranges.append(rng)
            start, status = int(rng[6:].split("-")[0]), 206
        body = bytes(data[start:])
        h.send_response(status)
        h.send_header("Content-Type", "application/octet-stream")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        step = 64 * 1024
        try:
            for i in range(0, len(body), step):
                h.wfile.write(body[i : i + step])
                self.served[ref] = self.served.get(ref, 0) + len(body[i : i + step])
                if self.rate:
                    time.sleep(step / self.rate)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _send(self, h: BaseHTTPRequestHandler, status: int, body: bytes, ctype: str) -> None:
        h.send_response(status)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)


def rewrite_diff_ids(src: Path, dest: Path, tag: str = "latest") -> Path:
    """Copy a single-manifest layout, giving its config a wrong diff ID (still a valid image)."""
    shutil.copytree(src, dest)
    index = json.loads((dest / "index.json").read_text())
    mdesc = index["manifests"][0]
    manifest = json.loads((dest / "blobs/sha256" / mdesc["digest"][7:]).read_bytes())
    config = json.loads((dest / "blobs/sha256" / manifest["config"]["digest"][7:]).read_bytes())
    config["rootfs"]["diff_ids"][0] = "sha256:" + "0" * 64
    cbody = json.dumps(config).encode()
    (dest / "blobs/sha256" / sha256_digest(cbody)[7:]).write_bytes(cbody)
    manifest["config"].update(digest=sha256_digest(cbody), size=len(cbody))
    mbody = json.dumps(manifest).encode()
    (dest / "blobs/sha256" / sha256_digest(mbody)[7:]).write_bytes(mbody)
    mdesc.update(digest=sha256_digest(mbody), size=len(mbody))
    mdesc.setdefault("annotations", {})["org.opencontainers.image.ref.name"] = tag
    (dest / "index.json").write_text(json.dumps(index))
    return dest
