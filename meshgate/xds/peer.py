"""One ADS stream's view of the rest of the server: what it reports, what it remembers.

The protocol engines (sotw.py, delta.py) decide what to send; they tell the
`Peer` what happened (sent, ACKed, NACKed, stale) and the Peer logs it and
updates the ledger. Nothing here touches gRPC.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from meshgate.xds import types
from meshgate.xds.logs import event
from meshgate.xds.nacks import NackMemory, reason
from meshgate.xds.resources import Resource

log = logging.getLogger("meshgate.xds.stream")


class ProtocolError(Exception):
    """A request the server will not serve (unknown type, malformed): INVALID_ARGUMENT."""


class Peer:
    def __init__(
        self,
        proxy: str,
        stream_id: str,
        *,
        mode: str,
        ledger: Any = None,
        nacks: NackMemory | None = None,
        secret_facts: Callable[[Sequence[Resource]], dict[str, Any]] | None = None,
        metrics: Any = None,
    ) -> None:
        self.proxy = proxy
        self.stream_id = stream_id
        self.mode = mode
        self.ledger = ledger
        self.nacks = nacks if nacks is not None else NackMemory()
        self.secret_facts = secret_facts
        self.metrics = metrics  # e.g. telemetry's ControlPlaneMetrics: pushed/acked/nacked
        self._nonce = 0

    def next_nonce(self) -> str:
        self._nonce += 1
        return f"{self.stream_id}-{self._nonce}"

    def check_type(self, type_url: str) -> None:
        if not types.is_known(type_url):
            served = ", ".join(types.SHORT[t] + "=" + t for t in types.PUSH_ORDER)
            raise ProtocolError(f"type_url {type_url!r} is not served here (served: {served})")

    def seen(self, type_url: str) -> None:
        if self.ledger is not None:
            self.ledger.seen(self.proxy, types.short(type_url))

    def sent(self, type_url: str, version: str, nonce: str, resources: int, removed: int = 0) -> None:
        event(log, "pushed", proxy=self.proxy, mode=self.mode, type=types.short(type_url), version=version,
              nonce=nonce, resources=resources, removed=removed or None)
        if self.ledger is not None:
            self.ledger.sent(self.proxy, types.short(type_url), version, nonce)
        if self.metrics is not None:
            self.metrics.pushed(self.proxy, types.short(type_url))

    def acked(self, type_url: str, version: str, resources: Sequence[Resource] = ()) -> None:
        event(log, "acked", proxy=self.proxy, mode=self.mode, type=types.short(type_url), version=version)
        facts: dict[str, Any] = {}
        if type_url == types.SECRET and resources and self.secret_facts is not None:
            facts = dict(self.secret_facts(resources))
        not_after = facts.pop("cert_not_after", None)
        if self.ledger is not None:
            self.ledger.acked(self.proxy, types.short(type_url), version, **facts)
        if self.metrics is not None:
            self.metrics.acked(self.proxy, types.short(type_url))
            if not_after is not None:  # the workload certificate this proxy now presents
                self.metrics.set_cert_expiry(self.proxy, not_after)

    def nacked(self, type_url: str, version: str, message: str, names: Iterable[str],
               resources: Sequence[Resource]) -> None:
        names = list(names)
        by_name = {r.name: r for r in resources}
        sources: dict[str, None] = {}
        for n in names:
            for s in by_name[n].sources if n in by_name else ():
                sources.setdefault(s)
        why = reason(message)
        event(log, "nacked", level=logging.WARNING, proxy=self.proxy, mode=self.mode,
              type=types.short(type_url), version=version, resources=",".join(names),
              sources=",".join(sources), reason=why)
        if self.ledger is not None:
            self.ledger.nacked(self.proxy, types.short(type_url), version, why, names, list(sources))
        if self.metrics is not None:
            self.metrics.nacked(self.proxy, types.short(type_url))

    def refused_secrets(self, names: Iterable[str]) -> None:
        """A proxy asked for secrets that are not its own: it gets nothing for them."""
        names = sorted(names)
        if names:
            event(log, "secret-refused", level=logging.WARNING, proxy=self.proxy, names=",".join(names))

    def stale(self, type_url: str, nonce: str) -> None:
        event(log, "stale-nonce-ignored", level=logging.DEBUG, proxy=self.proxy,
              type=types.short(type_url), nonce=nonce)

    def skipped_nacked(self, type_url: str, version: str, names: Iterable[str] = ()) -> None:
        event(log, "not-resending-nacked", proxy=self.proxy, type=types.short(type_url), version=version,
              resources=",".join(names) or None)
