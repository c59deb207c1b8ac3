"""Field checks shared by every noun: collect all violations, then raise once.

    v = Checker("service")
    v.dns_label("name", name)
    v.port("port", port)
    v.one_of("protocol", protocol, PROTOCOLS)
    v.done()   # raises ValidationError listing every violation with its field
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from typing import Any

from meshgate.errors import ValidationError, Violation

_DNS_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)([a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)(\.[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)*\.?$"
)
_TRUST_DOMAIN = re.compile(r"^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$")


def is_dns_label(value: str) -> bool:
    return bool(_DNS_LABEL.match(value))


def is_hostname(value: str) -> bool:
    # An all-digit last label (e.g. "999.1.1.1") is a mistyped IP, not a host name (RFC 1123).
    return bool(_HOSTNAME.match(value)) and not value.rstrip(".").rsplit(".", 1)[-1].isdigit()


def is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def mapped_ipv4(value: str) -> str | None:
    """The IPv4 address inside an IPv4-mapped IPv6 address ('::ffff:10.0.0.7' -> '10.0.0.7').

    Envoy opens IPv6-only sockets, so it can neither bind such an address (LDS NACK
    `cannot bind '[::ffff:10.0.0.7]:P': Invalid argument`) nor connect to one (the
    endpoint is accepted, then every connection fails `Network is unreachable`;
    measured on Envoy 1.40). None for anything else, host names included.
    """
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        return None
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
    return str(mapped) if mapped is not None else None


def mapped_message(value: str, plain: str) -> str:
    """The error for an address field holding an IPv4-mapped IPv6 address (`value`
    is what the user gave, already parsed as an address, so safe to echo)."""
    return (f"{value} is an IPv4-mapped IPv6 address, which Envoy can neither bind nor "
            f"connect to; use {plain}")


def split_host_port(value: str) -> tuple[str, int] | None:
    """'127.0.0.1:8443' or '[::1]:8443' -> (host, port); None when malformed."""
    m = re.match(r"^\[([0-9a-fA-F:.]+)\]:([0-9]{1,5})$", value) or re.match(
        r"^([^:\[\]]+):([0-9]{1,5})$", value
    )
    if not m:
        return None
    port = int(m.group(2))
    if not 1 <= port <= 65535:
        return None
    return m.group(1), port


class Checker:
    """Collects violations for one subject (e.g. `service "orders"`)."""

    def __init__(self, subject: str = "") -> None:
        self.subject = subject
        self.violations: list[Violation] = []

    def add(self, field: str, message: str) -> None:
        self.violations.append(Violation(field, message))

    def require(self, ok: bool, field: str, message: str) -> bool:
        if not ok:
            self.add(field, message)
        return ok

    def dns_label(self, field: str, value: Any) -> bool:
        return self.require(
            isinstance(value, str) and is_dns_label(value),
            field,
            f"{value!r} is not a DNS label (lowercase letters, digits and '-', 1-63 "
            "characters, starting and ending with a letter or digit)",
        )

    def port(self, field: str, value: Any) -> bool:
        ok = isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 65535
        return self.require(ok, field, f"{value!r} is not a port (1-65535)")

    def positive_int(self, field: str, value: Any, maximum: int | None = None) -> bool:
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= 1
        if ok and maximum is not None:
            ok = value <= maximum
        limit = f"1-{maximum}" if maximum is not None else ">= 1"
        return self.require(ok, field, f"{value!r} is not a whole number {limit}")

    def address(self, field: str, value: Any) -> bool:
        """An IP address or host name Envoy can bind or connect to."""
        ok = isinstance(value, str) and (is_ip(value) or is_hostname(value))
        if not self.require(ok, field, f"{value!r} is not an IP address or host name"):
            return False
        plain = mapped_ipv4(value)
        return self.require(plain is None, field, mapped_message(value, plain or ""))

    def hostname(self, field: str, value: Any) -> bool:
        ok = isinstance(value, str) and is_hostname(value)
        return self.require(ok, field, f"{value!r} is not a host name")

    def host_port(self, field: str, value: Any) -> bool:
        """HOST:PORT ('[v6]:PORT') that Envoy can bind or connect to."""
        parsed = split_host_port(value) if isinstance(value, str) else None
        ok = parsed is not None and (is_ip(parsed[0]) or is_hostname(parsed[0]))
        if not self.require(ok, field, f"{value!r} is not HOST:PORT (port 1-65535)"):
            return False
        assert parsed is not None
        plain = mapped_ipv4(parsed[0])
        return self.require(plain is None, field, mapped_message(value, f"{plain}:{parsed[1]}"))

    def trust_domain(self, field: str, value: Any) -> bool:
        ok = isinstance(value, str) and bool(_TRUST_DOMAIN.match(value)) and ".." not in value
        return self.require(
            ok, field, f"{value!r} is not a trust domain (lowercase DNS name, e.g. example.org)"
        )

    def one_of(self, field: str, value: Any, allowed: Iterable[str]) -> bool:
        allowed = tuple(allowed)
        return self.require(
            value in allowed, field, f"{value!r} is not one of: {', '.join(allowed)}"
        )

    def done(self) -> None:
        if self.violations:
            raise ValidationError(self.violations, self.subject)
