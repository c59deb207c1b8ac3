"""A proxy's translation plan, and running a generator so its failure names itself."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from meshgate.model import Proxy
from meshgate.xds.errors import TranslateError
from meshgate.xds.translate.generated import Generated

T = TypeVar("T")


@dataclass(frozen=True)
class Plan:
    """`own`: resources only this proxy (or proxies exactly like it) gets.
    `upstreams`: services whose shared `svc/<name>` cluster and endpoints it needs."""

    own: tuple[Generated, ...]
    upstreams: tuple[str, ...]


EMPTY_PLAN = Plan(own=(), upstreams=())


def run(proxy: Proxy, generator: str, fn: Callable[..., T], *args: Any) -> T:
    try:
        return fn(*args)
    except TranslateError:
        raise
    except Exception as exc:  # noqa: BLE001 - re-raised with the proxy and generator named
        raise TranslateError(proxy.name, generator, exc) from exc
