"""A tiny HTTP app for demos and tests: echoes what it received, calls other services.

    python -m meshgate.fleet.app --name orders --port 9001 [--outbound 127.0.0.1:15001]

GET /anything         -> 200 JSON {service, method, path, headers, instance}
GET /call/<svc>/<p>   -> calls http://<svc>/<p> through the local sidecar's outbound
                         listener (Host: <svc>) and returns its status and body
GET /status/<code>    -> responds with that status code
Python is never in the mesh's request path: this app stands in for the user's
service behind its sidecar.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def make_handler(name: str, outbound: tuple[str, int] | None, instance: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = f"meshgate-app/{name}"

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass  # quiet: the sidecar's access log is the record

        def _send(self, status: int, body: dict[str, object]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def _handle(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            if length:
                self.rfile.read(length)
            parts = self.path.split("/", 3)
            if len(parts) >= 3 and parts[1] == "status" and parts[2].split("?")[0].isdigit():
                self._send(int(parts[2].split("?")[0]), {"service": name, "instance": instance})
                return
            if len(parts) >= 3 and parts[1] == "call" and outbound is not None:
                target = parts[2]
                path = "/" + (parts[3] if len(parts) > 3 else "")
                self._call(target, path)
                return
            self._send(
                200,
                {
                    "service": name,
                    "instance": instance,
                    "method": self.command,
                    "path": self.path,
                    "headers": {k.lower(): v for k, v in self.headers.items()},
                },
            )

        def _call(self, target: str, path: str) -> None:
            assert outbound is not None
            conn = http.client.HTTPConnection(*outbound, timeout=10)
            try:
                headers = {"host": target}
                auth = self.headers.get("authorization")
                if auth:
                    headers["authorization"] = auth
                conn.request("GET", path, headers=headers)
                resp = conn.getresponse()
                raw = resp.read()
                try:
                    body: object = json.loads(raw)
                except ValueError:
                    body = raw.decode(errors="replace")
                self._send(
                    resp.status,
                    {
                        "service": name,
                        "instance": instance,
                        "called": target,
                        "status": resp.status,
                        "details": resp.getheader("x-meshgate-denied-by") or "",
                        "upstream": body,
                    },
                )
            except OSError as exc:
                self._send(502, {"service": name, "called": target, "error": str(exc)})
            finally:
                conn.close()

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _handle

    return Handler


class App:
    """The app in a thread of the current process (tests), stopped by `stop()`."""

    def __init__(self, name: str, port: int = 0, host: str = "127.0.0.1",
                 outbound: tuple[str, int] | None = None, instance: str | None = None) -> None:
        self.server = ThreadingHTTPServer((host, port), make_handler(name, outbound, instance or f"{name}-{port}"))
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, name=f"app-{name}", daemon=True)

    def start(self) -> App:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)

    def __enter__(self) -> App:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--name", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--outbound", default=None, help="HOST:PORT of the sidecar's outbound listener")
    p.add_argument("--instance", default=None)
    a = p.parse_args()
    outbound = None
    if a.outbound:
        h, _, port = a.outbound.rpartition(":")
        outbound = (h, int(port))
    server = ThreadingHTTPServer((a.host, a.port), make_handler(a.name, outbound, a.instance or f"{a.name}-{os.getpid()}"))
    server.daemon_threads = True
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
