"""State-of-the-world ADS, one stream: every response holds the whole subscribed set.

Rules (the ones that bite are in ENVOY_NOTES.md):
- a request whose nonce is not the last one sent for its type is stale: ignored;
- a request with an empty nonce (first on a stream, or a reconnect carrying
  the version Envoy has) is always answered, even when nothing changed;
- a NACKed type version is never sent again (to this proxy, on any stream);
- CDS and LDS with no names are wildcard; EDS, RDS and SDS are by name, and
  a name the snapshot lacks is left out of the response (SotW omission);
- a CDS response carrying new or changed EDS clusters (compared with what the
  proxy last ACKed) is followed by the EDS response again, even at the same
  version: Envoy warms those clusters until endpoints arrive (rewarm.py).
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


@dataclass
class _TypeState:
    wildcard: bool = False
    names: frozenset[str] = frozenset()
    version: str | None = None  # last sent
    nonce: str | None = None
    sent: tuple[Resource, ...] = ()
    acked: str | None = None
    acked_resources: dict[str, str] | None = None  # name -> version the proxy runs, when known


@dataclass
class SotwStream:
    peer: Peer
    types: dict[str, _TypeState] = field(default_factory=dict)
    # EDS names whose clusters were just sent new or changed: the next EDS response goes
    # out even at the same version (it may be the answer to the stream's first EDS request)
    rewarm: set[str] = field(default_factory=set)

    def handle(self, req: discovery_pb2.DiscoveryRequest, snap: Snapshot) -> list[discovery_pb2.DiscoveryResponse]:
        t = req.type_url
        self.peer.check_type(t)
        st = self.types.get(t)
        first = st is None
        if st is None:
            st = self.types[t] = _TypeState()
        self.peer.seen(t)
        if req.response_nonce:
            if req.response_nonce != st.nonce:
                self.peer.stale(t, req.response_nonce)
                return []
            if req.HasField("error_detail"):
                self._nack(t, st, req)
            else:
                st.acked = req.version_info
                st.acked_resources = {r.name: r.version for r in st.sent}
                self.peer.acked(t, req.version_info, st.sent)
        elif req.version_info:
            st.acked = req.version_info  # a reconnect: Envoy already has this version
        names = set(req.resource_names)
        if types.WILDCARD in names:
            names.discard(types.WILDCARD)
            wildcard = True
        else:
            wildcard = not names and t in types.WILDCARD_BY_DEFAULT and (first or st.wildcard)
        changed = wildcard != st.wildcard or frozenset(names) != st.names
        if t == types.SECRET and changed:
            self.peer.refused_secrets(n for n in names if n not in snap.of(t))
        st.wildcard, st.names = wildcard, frozenset(names)
        out = [self._respond(t, st, snap, force=not req.response_nonce or changed)]
        eds = self.types.get(types.ENDPOINT)
        if t == types.CLUSTER and self.rewarm and eds is not None and eds.nonce is not None:
            out.append(self._respond(types.ENDPOINT, eds, snap, force=False))
        return [r for r in out if r is not None]

    def push(self, snap: Snapshot) -> list[discovery_pb2.DiscoveryResponse]:
        """What a new snapshot means for this stream, in push order."""
        return types.in_push_order(self.types, lambda t, st: self._respond(t, st, snap, force=False))

    def _respond(self, t: str, st: _TypeState, snap: Snapshot, *, force: bool) -> discovery_pb2.DiscoveryResponse | None:
        items = snap.of(t)
        names = sorted(items) if st.wildcard else sorted(n for n in st.names if n in items)
        version = snap.type_version(t, None if st.wildcard else names)
        if t == types.ENDPOINT and self.rewarm:
            force = force or not self.rewarm.isdisjoint(names)
            self.rewarm = set()
        if (t, version) in self.peer.nacks:
            if version != st.version or force:
                self.peer.skipped_nacked(t, version)
            return None
        if version == st.version and not force:
            return None
        nonce = self.peer.next_nonce()
        sent = tuple(items[n] for n in names)
        if t == types.CLUSTER:
            self.rewarm |= endpoint_names(self._changed(st, version, sent))
        resp = discovery_pb2.DiscoveryResponse(
            version_info=version, type_url=t, nonce=nonce, resources=[r.any for r in sent]
        )
        st.version, st.nonce, st.sent = version, nonce, sent
        self.peer.sent(t, version, nonce, len(sent))
        return resp

    @staticmethod
    def _changed(st: _TypeState, version: str, sent: tuple[Resource, ...]) -> tuple[Resource, ...]:
        """What in `sent` the proxy does not run yet: compared with its last ACKed
        resources; on a new stream only its version is known (all or nothing)."""
        if st.acked_resources is not None:
            return tuple(r for r in sent if st.acked_resources.get(r.name) != r.version)
        return () if version == st.acked else sent

    def _nack(self, t: str, st: _TypeState, req: discovery_pb2.DiscoveryRequest) -> None:
        assert st.version is not None
        self.peer.nacks.add(t, st.version)
        names = [r.name for r in st.sent]
        bad = named_in(req.error_detail.message, names) or names
        self.peer.nacked(t, st.version, req.error_detail.message, bad, st.sent)
