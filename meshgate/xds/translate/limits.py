"""What one client can make an Envoy hold: header bytes and time, idle connections,
buffered bytes, HTTP/2 streams. Every connection manager and listener meshgate
generates takes these (docs/security.md lists them with the tests that show them).

Envoy's defaults are tuned for a service mesh (trusted callers); the edge takes
connections from anyone, so it follows Envoy's edge best practices:
- request headers: the whole header block within REQUEST_HEADERS_TIMEOUT_S of
  its first byte (a slowloris client that sends a byte now and then is cut
  off; Envoy's default is no limit), at most MAX_REQUEST_HEADERS_KB and
  MAX_HEADERS_COUNT headers (Envoy's defaults, set explicitly: 431 beyond);
- a stream with no activity for STREAM_IDLE_TIMEOUT_S is reset (Envoy's
  default, explicit); at the edge a connection with no stream is closed after
  EDGE_IDLE_TIMEOUT_S (Envoy's default is 1 h);
- listeners that take callers' connections (edge, sidecar inbound) buffer at
  most LISTENER_BUFFER_BYTES per connection before flow control pushes back
  (Envoy's default is 1 MiB);
- HTTP/2 at the edge: at most H2_MAX_CONCURRENT_STREAMS streams per connection
  and 64 KiB / 1 MiB initial stream / connection windows.
Request bodies have no size limit: no filter buffers them, they stream to the
app under flow control, so the app decides how much it takes.
"""

from __future__ import annotations

from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm,
)

from meshgate.xds.translate.common import seconds

REQUEST_HEADERS_TIMEOUT_S = 10.0
MAX_REQUEST_HEADERS_KB = 60
MAX_HEADERS_COUNT = 100
STREAM_IDLE_TIMEOUT_S = 300.0
EDGE_IDLE_TIMEOUT_S = 300.0
LISTENER_BUFFER_BYTES = 32 * 1024
H2_MAX_CONCURRENT_STREAMS = 100
H2_INITIAL_STREAM_WINDOW = 64 * 1024
H2_INITIAL_CONNECTION_WINDOW = 1024 * 1024


def apply_request_limits(manager: hcm.HttpConnectionManager, *, edge: bool = False) -> hcm.HttpConnectionManager:
    """Set the limits above on an HCM (in place) and return it."""
    manager.request_headers_timeout.CopyFrom(seconds(REQUEST_HEADERS_TIMEOUT_S))
    manager.max_request_headers_kb.value = MAX_REQUEST_HEADERS_KB
    manager.common_http_protocol_options.max_headers_count.value = MAX_HEADERS_COUNT
    manager.stream_idle_timeout.CopyFrom(seconds(STREAM_IDLE_TIMEOUT_S))
    if edge:
        manager.common_http_protocol_options.idle_timeout.CopyFrom(seconds(EDGE_IDLE_TIMEOUT_S))
        h2 = manager.http2_protocol_options
        h2.max_concurrent_streams.value = H2_MAX_CONCURRENT_STREAMS
        h2.initial_stream_window_size.value = H2_INITIAL_STREAM_WINDOW
        h2.initial_connection_window_size.value = H2_INITIAL_CONNECTION_WINDOW
    return manager


def limit_listener_buffer(listener: listener_pb2.Listener) -> listener_pb2.Listener:
    """Callers' connections: at most LISTENER_BUFFER_BYTES buffered each (in place)."""
    listener.per_connection_buffer_limit_bytes.value = LISTENER_BUFFER_BYTES
    return listener
