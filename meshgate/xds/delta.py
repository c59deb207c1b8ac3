"""Incremental (delta) ADS, one stream: only what changed, by resource.

Rules:
- the first request of a type may carry `initial_resource_versions` (a
  reconnect): resources the client already has at that version are not sent,
  so a server restart sends nothing new;
- subscriptions change on every request, whatever its nonce (they are deltas);
- removals: a resource the client has that left the snapshot is named in
  `removed_resources`; so is a subscribed name that does not exist, once;
- a NACK names resources in Envoy's message when it can: those versions are
  remembered and never resent; the rest of the rejected response is sent
  again without them. When nothing is named, every resource of the response
  is treated as rejected (never a resend loop);
- every new or changed EDS cluster sent gets its endpoints sent again right
  after the CDS response, even at the same version (Envoy warms the new
  cluster until they arrive: rewarm.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from envoy.service.discovery.v3 import discovery_pb2

from meshgate.xds import types
from meshgate.xds.nacks import named_in
from meshgate.xds.peer import Peer
from meshgate.xds.resources import Resource
from meshgate.xds.rewarm import endpoint_names
from meshgate.xds.snapshot import Snapshot


@dataclass(frozen=True)
class _Sent:
    version: str  # system_version_info of the response
    resources: tuple[Resource, ...]
    removed: tuple[str, ...]
    before: dict[str, str | None]  # what the client had before this response, by name


@dataclass
class _TypeState:
    wildcard: bool = False
    names: set[str] = field(default_factory=set)
    known: dict[str, str | None] = field(default_factory=dict)  # None: told it does not exist
    pending: dict[str, _Sent] = field(default_factory=dict)


def _key(t: str, name: str) -> str:
    return f"{t}|{name}"


@dataclass
class DeltaStream:
    peer: Peer
    types: dict[str, _TypeState] = field(default_factory=dict)
    # EDS names to send again (their clusters were just sent: Envoy re-warms them); kept
    # until the next EDS response, which may come with the first EDS request of a stream
    rewarm: set[str] = field(default_factory=set)

    def handle(self, req: discovery_pb2.DeltaDiscoveryRequest, snap: Snapshot) -> list[discovery_pb2.DeltaDiscoveryResponse]:
        t = req.type_url
        self.peer.check_type(t)
        st = self.types.get(t)
        fresh = False
        if st is None:
            st = self.types[t] = _TypeState(known=dict(req.initial_resource_versions))
            fresh = not req.initial_resource_versions
            # legacy wildcard: a first request naming nothing means everything
            st.wildcard = not req.resource_names_subscribe
        self.peer.seen(t)
        if req.response_nonce:
            sent = st.pending.pop(req.response_nonce, None)
            if sent is None:
                self.peer.stale(t, req.response_nonce)
            elif req.HasField("error_detail"):
                self._nack(t, st, sent, req.error_detail.message)
            else:
                self.peer.acked(t, sent.version, sent.resources)
        for n in req.resource_names_subscribe:
            if n == types.WILDCARD:
                st.wildcard = True
            else:
                st.names.add(n)
        if t == types.SECRET:
            self.peer.refused_secrets(n for n in req.resource_names_subscribe if n not in snap.of(t))
        for n in req.resource_names_unsubscribe:
            if n == types.WILDCARD:
                st.wildcard = False
            else:
                st.names.discard(n)
                if not st.wildcard:
                    st.known.pop(n, None)
        out = [self._respond(t, st, snap, force=fresh)]
        if t == types.CLUSTER and self.rewarm and types.ENDPOINT in self.types:
            out.append(self._respond(types.ENDPOINT, self.types[types.ENDPOINT], snap, force=False))
        return [r for r in out if r is not None]

    def push(self, snap: Snapshot) -> list[discovery_pb2.DeltaDiscoveryResponse]:
        return types.in_push_order(self.types, lambda t, st: self._respond(t, st, snap, force=False))

    def _respond(self, t: str, st: _TypeState, snap: Snapshot, *, force: bool) -> discovery_pb2.DeltaDiscoveryResponse | None:
        items = snap.of(t)
        wanted = items.keys() if st.wildcard else (n for n in st.names if n in items)
        again: set[str] = set()
        if t == types.ENDPOINT:
            again, self.rewarm = self.rewarm, set()
        send: list[Resource] = []
        for n in sorted(wanted):
            r = items[n]
            if st.known.get(n) == r.version and n not in again:
                continue
            if (_key(t, n), r.version) in self.peer.nacks:
                continue
            send.append(r)
        removed = [n for n, v in st.known.items() if v is not None and n not in items]
        removed += [n for n in sorted(st.names) if n not in items and n not in st.known]
        if t == types.CLUSTER:
            self.rewarm |= endpoint_names(send)
        if not send and not removed and not force:
            return None
        before = {r.name: st.known.get(r.name) for r in send}
        before.update({n: st.known.get(n) for n in removed})
        for r in send:
            st.known[r.name] = r.version
        for n in removed:
            if n in st.names:
                st.known[n] = None  # told: it does not exist
            else:
                st.known.pop(n, None)
        version = snap.type_version(t)
        nonce = self.peer.next_nonce()
        st.pending[nonce] = _Sent(version, tuple(send), tuple(removed), before)
        self.peer.sent(t, version, nonce, len(send), len(removed))
        return discovery_pb2.DeltaDiscoveryResponse(
            system_version_info=version,
            type_url=t,
            nonce=nonce,
            resources=[discovery_pb2.Resource(name=r.name, version=r.version, resource=r.any) for r in send],
            removed_resources=removed,
        )

    def _nack(self, t: str, st: _TypeState, sent: _Sent, message: str) -> None:
        names = [r.name for r in sent.resources]
        bad = set(named_in(message, names) or names)
        for r in sent.resources:
            if r.name in bad:
                self.peer.nacks.add(_key(t, r.name), r.version)
            elif st.known.get(r.name) == r.version:
                # not the culprit: the client does not have it (the response was
                # rejected), so it goes out again with the next response
                prev = sent.before.get(r.name)
                if prev is None:
                    st.known.pop(r.name, None)
                else:
                    st.known[r.name] = prev
        self.peer.nacked(t, sent.version, message, sorted(bad), sent.resources)
