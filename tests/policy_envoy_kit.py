"""A static Envoy standing in for a sidecar's inbound side, for policy tests.

Real mTLS (a throwaway mesh CA, client certificates with SPIFFE URI SANs), the
compiled RBAC filters (rules on the route, as in the mesh) and the HCM
hardening, one listener per target service;
HTTP targets answer with a direct response, tcp targets proxy to a small echo
server. The access log (flushed every 50 ms) records the status, the path the
filters saw, Envoy's response detail and the RBAC dynamic metadata per request.
"""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2, base_pb2, substitution_format_string_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.access_loggers.file.v3 import file_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm,
)
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, tls_pb2
from google.protobuf import any_pb2, json_format, struct_pb2, wrappers_pb2

from meshgate.fleet.envoy import EnvoyProcess, envoy_args, free_port
from meshgate.model import World
from meshgate.policy.compile import http_rbac_filters, http_rbac_per_route, network_rbac_filters
from meshgate.policy.hardening import hcm_path_hardening
from tests.edge_kit import MeshCa

LOG_FORMAT = {
    "case": "%REQ(X-CASE)%",
    "status": "%RESPONSE_CODE%",
    "path": "%REQ(:PATH)%",
    "detail": "%RESPONSE_CODE_DETAILS%",
    "rbac": "%DYNAMIC_METADATA(envoy.filters.http.rbac)%",
}
TCP_LOG_FORMAT = {"detail": "%CONNECTION_TERMINATION_DETAILS%", "bytes": "%BYTES_RECEIVED%"}


def _pack(msg: Any) -> any_pb2.Any:
    out = any_pb2.Any()
    out.Pack(msg)
    return out


def _server_tls(ca: MeshCa, uri: str) -> base_pb2.TransportSocket:
    cert, key = ca.leaf(uri)
    ctx = tls_pb2.DownstreamTlsContext(
        require_client_certificate=wrappers_pb2.BoolValue(value=True),
        common_tls_context=tls_pb2.CommonTlsContext(
            tls_certificates=[common_pb2.TlsCertificate(
                certificate_chain=base_pb2.DataSource(inline_string=cert),
                private_key=base_pb2.DataSource(inline_string=key),
            )],
            validation_context=common_pb2.CertificateValidationContext(
                trusted_ca=base_pb2.DataSource(inline_string=ca.pem)
            ),
        ),
    )
    return base_pb2.TransportSocket(name="envoy.transport_sockets.tls", typed_config=_pack(ctx))


def _file_log(path: Path, fmt: dict[str, str]) -> accesslog_pb2.AccessLog:
    json_fmt = struct_pb2.Struct()
    json_fmt.update(fmt)
    return accesslog_pb2.AccessLog(
        name="envoy.access_loggers.file",
        typed_config=_pack(file_pb2.FileAccessLog(
            path=str(path),
            log_format=substitution_format_string_pb2.SubstitutionFormatString(json_format=json_fmt),
        )),
    )


def _address(port: int) -> address_pb2.Address:
    return address_pb2.Address(
        socket_address=address_pb2.SocketAddress(address="127.0.0.1", port_value=port)
    )


def http_listener(world: World, service: str, ca: MeshCa, port: int, log: Path) -> listener_pb2.Listener:
    route = route_pb2.RouteConfiguration(name=service, virtual_hosts=[route_components_pb2.VirtualHost(
        name=service, domains=["*"], routes=[route_components_pb2.Route(
            match=route_components_pb2.RouteMatch(prefix="/"),
            direct_response=route_components_pb2.DirectResponseAction(
                status=200, body=base_pb2.DataSource(inline_string="app")),
        )],
        # the rules ride on the route, as in the mesh (compile.http_rbac_per_route)
        typed_per_filter_config=http_rbac_per_route(world, service),
    )])
    manager = hcm.HttpConnectionManager(
        stat_prefix=service,
        route_config=route,
        http_filters=[
            *http_rbac_filters(world, service),
            hcm.HttpFilter(name="envoy.filters.http.router", typed_config=_pack(router_pb2.Router())),
        ],
        access_log=[_file_log(log, LOG_FORMAT)],
        **hcm_path_hardening(),
    )
    return listener_pb2.Listener(
        name=service, address=_address(port),
        filter_chains=[listener_components_pb2.FilterChain(
            filters=[listener_components_pb2.Filter(
                name="envoy.filters.network.http_connection_manager", typed_config=_pack(manager))],
            transport_socket=_server_tls(ca, world.mesh.service_identity(service)),
        )],
    )


def tcp_listener(world: World, service: str, ca: MeshCa, port: int, upstream: int,
                 log: Path) -> tuple[listener_pb2.Listener, cluster_pb2.Cluster]:
    cluster = cluster_pb2.Cluster(
        name=f"app-{service}", type=cluster_pb2.Cluster.STATIC,
        connect_timeout={"seconds": 1},
        load_assignment=endpoint_pb2.ClusterLoadAssignment(
            cluster_name=f"app-{service}",
            endpoints=[endpoint_components_pb2.LocalityLbEndpoints(lb_endpoints=[
                endpoint_components_pb2.LbEndpoint(endpoint=endpoint_components_pb2.Endpoint(
                    address=_address(upstream)))
            ])],
        ),
    )
    proxy = tcp_proxy_pb2.TcpProxy(stat_prefix=service, cluster=cluster.name,
                                   access_log=[_file_log(log, TCP_LOG_FORMAT)])
    listener = listener_pb2.Listener(
        name=service, address=_address(port),
        filter_chains=[listener_components_pb2.FilterChain(
            filters=[
                *network_rbac_filters(world, service),
                listener_components_pb2.Filter(name="envoy.filters.network.tcp_proxy",
                                               typed_config=_pack(proxy)),
            ],
            transport_socket=_server_tls(ca, world.mesh.service_identity(service)),
        )],
    )
    return listener, cluster


class EchoServer:
    """A TCP server that echoes one read back, then closes (the tcp service's app)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self._stop = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(2)
                try:
                    data = conn.recv(1024)
                    conn.sendall(b"echo:" + data)
                except OSError:
                    pass

    def close(self) -> None:
        self._stop = True
        self.sock.close()
        self.thread.join(2)


class FastFlushEnvoy(EnvoyProcess):
    """EnvoyProcess whose file access logs flush every 50 ms (default 10 s)."""

    def start(self) -> FastFlushEnvoy:
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child
        self.proc = subprocess.Popen(
            envoy_args(self.config_path, log_level=self.log_level,
                       extra=["--file-flush-interval-msec", "50"]),
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        log.close()
        return self


@dataclass
class StaticInbound:
    """One Envoy with an inbound listener per target service."""

    world: World
    workdir: Path
    ca: MeshCa = field(default_factory=MeshCa)
    ports: dict[str, int] = field(default_factory=dict)
    envoy: FastFlushEnvoy | None = None
    echo: EchoServer | None = None
    access_log: Path = field(init=False)
    tcp_log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.access_log = self.workdir / "access.log"
        self.tcp_log = self.workdir / "tcp.log"

    def start(self) -> StaticInbound:
        listeners, clusters = [], []
        for name, svc in sorted(self.world.services.items()):
            self.ports[name] = free_port()
            if svc.protocol == "tcp":
                if self.echo is None:
                    self.echo = EchoServer()
                lst, cl = tcp_listener(self.world, name, self.ca, self.ports[name], self.echo.port,
                                       self.tcp_log)
                listeners.append(lst)
                clusters.append(cl)
            else:
                listeners.append(http_listener(self.world, name, self.ca, self.ports[name],
                                               self.access_log))
        bootstrap = {
            "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": free_port()}}},
            "static_resources": {
                "listeners": [json_format.MessageToDict(x) for x in listeners],
                "clusters": [json_format.MessageToDict(x) for x in clusters],
            },
        }
        self.envoy = FastFlushEnvoy(bootstrap, self.workdir, "inbound")
        self.envoy.start()
        self.envoy.wait_live()
        return self

    def stop(self) -> None:
        if self.envoy is not None:
            self.envoy.stop()
        if self.echo is not None:
            self.echo.close()

    def log_lines(self, path: Path) -> list[dict[str, Any]]:
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def wait_log(self, path: Path, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        """The access log once it holds at least `count` lines (bounded wait)."""
        deadline = time.monotonic() + timeout
        while True:
            lines = self.log_lines(path)
            if len(lines) >= count or time.monotonic() > deadline:
                return lines
            time.sleep(0.05)

