"""JWT providers: who issues the tokens edge routes accept, and their public keys.

    p = add_jwt_provider(w, "auth0", issuer="https://example.auth0.com/",
                         audiences=["api"], jwks=open("jwks.json").read())
    p = update_jwt_provider(w, "auth0", jwks=new_jwks)      # key rotation
    remove_jwt_provider(w, "auth0")                          # Conflict while routes use it
    get_jwt_provider(conn, "auth0"); list_jwt_providers(conn)

Envoy checks every token (signature, `iss`, `aud`, `exp`/`nbf`) in its
jwt_authn filter; meshgate only keeps the settings and refuses ones that would
make that check weak or impossible:
- at least one audience: without one Envoy accepts a token minted for any API;
- the JWKS holds public keys only (RSA, EC, OKP), never private key material
  and never symmetric (`oct`) secrets, which would sit in the database and in
  every gateway's config;
- `alg: none` is refused in a key, and Envoy refuses it in tokens;
- a remote JWKS is fetched over https (plain http only from a loopback host,
  for local identity providers and tests).
"""

from __future__ import annotations

import ipaddress
import json
import time
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import Connection, insert, select

from meshgate.errors import AlreadyExists, Conflict, NotFound
from meshgate.model import JwtProvider
from meshgate.store import schema
from meshgate.store.rows import delete_row, record_row, update_row
from meshgate.store.txn import Write
from meshgate.store.world import jwt_provider_from_row
from meshgate.validation import Checker, is_hostname, is_ip, mapped_ipv4, mapped_message

MAX_JWKS_BYTES = 256 * 1024
MAX_KEYS = 100
MAX_AUDIENCES = 20
MAX_TEXT = 500

# Which algorithms fit which key type (and curve): a key naming another is a mistake.
_ALGS = {
    "RSA": {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"},
    "EC": {"ES256", "ES384", "ES512"},
    "OKP": {"EdDSA"},
}
_EC_CURVES = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}
_REQUIRED = {"RSA": ("n", "e"), "EC": ("crv", "x", "y"), "OKP": ("crv", "x")}
_PRIVATE_FIELDS = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")


def provider_to_dict(p: JwtProvider) -> dict[str, Any]:
    """The provider as users see it (JSON/YAML output)."""
    return {
        "name": p.name,
        "issuer": p.issuer,
        "audiences": list(p.audiences),
        "jwks": json.loads(p.jwks) if p.jwks else None,
        "jwks_uri": p.jwks_uri,
    }


def key_ids(p: JwtProvider) -> list[str]:
    """The `kid` (or `kty` when unnamed) of each key of an inline JWKS."""
    if not p.jwks:
        return []
    return [str(k.get("kid") or "(" + str(k.get("kty")) + ")") for k in json.loads(p.jwks)["keys"]]


def _jwk_problems(i: int, key: Any, seen_kids: set[str]) -> list[tuple[str, str]]:
    field = f"jwks.keys[{i}]"
    if not isinstance(key, dict):
        return [(field, "is not a JSON object")]
    out: list[tuple[str, str]] = []
    kty = key.get("kty")
    if kty == "oct":
        return [(f"{field}.kty", "symmetric keys (oct) are refused: use RS*, ES* or EdDSA public keys")]
    if kty not in _REQUIRED:
        return [(f"{field}.kty", f"{kty!r} is not one of: RSA, EC, OKP")]
    private = [f for f in _PRIVATE_FIELDS if f in key]
    if private:
        out.append((field, f"holds private key material ({', '.join(private)}): publish public keys only"))
    for name in _REQUIRED[kty]:
        if not isinstance(key.get(name), str) or not key.get(name):
            out.append((f"{field}.{name}", f"required for kty {kty}"))
    alg = key.get("alg")
    if alg is not None:
        if alg == "none" or not isinstance(alg, str):
            out.append((f"{field}.alg", f"{alg!r} is refused: a key must name a signature algorithm"))
        elif alg not in _ALGS[kty]:
            out.append((f"{field}.alg", f"{alg!r} does not fit kty {kty} (one of: {', '.join(sorted(_ALGS[kty]))})"))
        elif kty == "EC" and _EC_CURVES.get(str(key.get("crv"))) not in (None, alg):
            out.append((f"{field}.alg", f"{alg!r} does not fit curve {key.get('crv')!r}"))
    crv = key.get("crv")
    if kty == "EC" and isinstance(crv, str) and crv not in _EC_CURVES:
        out.append((f"{field}.crv", f"{crv!r} is not one of: {', '.join(_EC_CURVES)}"))
    if kty == "OKP" and isinstance(crv, str) and crv != "Ed25519":
        out.append((f"{field}.crv", f"{crv!r} is not supported (Ed25519)"))
    use = key.get("use")
    if use is not None and use != "sig":
        out.append((f"{field}.use", f"{use!r}: keys that verify tokens have use \"sig\""))
    kid = key.get("kid")
    if kid is not None:
        if not isinstance(kid, str) or not kid:
            out.append((f"{field}.kid", "must be a non-empty string"))
        elif kid in seen_kids:
            out.append((f"{field}.kid", f"{kid!r} is used by another key"))
        else:
            seen_kids.add(kid)
    if not out:
        out += _key_material_problems(field, key)
    return out


def _key_material_problems(field: str, key: dict[str, Any]) -> list[tuple[str, str]]:
    """Let PyJWT load the key: catches bad base64, wrong lengths, points off the curve."""
    import jwt

    try:
        jwt.PyJWK(key)
    except (jwt.exceptions.PyJWKError, jwt.exceptions.InvalidKeyError, ValueError, TypeError) as exc:
        return [(field, f"not a usable public key ({exc})")]
    return []


def parse_jwks(v: Checker, text: Any) -> str | None:
    """The JWKS as canonical JSON, or None after adding each violation to `v`."""
    if not isinstance(text, str) or not text.strip():
        v.add("jwks", "empty: expected a JSON Web Key Set ({\"keys\": [...]})")
        return None
    if len(text.encode()) > MAX_JWKS_BYTES:
        v.add("jwks", f"larger than {MAX_JWKS_BYTES // 1024} KiB")
        return None
    try:
        data = json.loads(text)
    except ValueError as exc:
        v.add("jwks", f"not JSON ({exc})")
        return None
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        v.add("jwks", 'not a JSON Web Key Set: expected an object with a "keys" list')
        return None
    keys = data["keys"]
    if not keys:
        v.add("jwks.keys", "empty: at least one public key is needed")
    if len(keys) > MAX_KEYS:
        v.add("jwks.keys", f"{len(keys)} keys; at most {MAX_KEYS}")
    seen: set[str] = set()
    before = len(v.violations)
    for i, key in enumerate(keys):
        for field, msg in _jwk_problems(i, key, seen):
            v.add(field, msg)
    if len(v.violations) > before or not keys:
        return None
    return json.dumps({"keys": keys}, sort_keys=True, separators=(",", ":"))


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_jwks_uri(v: Checker, uri: Any) -> None:
    if not isinstance(uri, str) or len(uri) > 1000:
        v.add("jwks_uri", "must be a URL of at most 1000 characters")
        return
    if any(c.isspace() or not c.isprintable() for c in uri):
        v.add("jwks_uri", f"{uri!r} holds spaces or control characters (percent-encode them)")
        return
    try:
        parts = urlsplit(uri)
        port = parts.port
    except ValueError as exc:
        v.add("jwks_uri", f"{uri!r} is not a URL ({exc})")
        return
    host = parts.hostname or ""
    if parts.scheme not in ("https", "http") or not host:
        v.add("jwks_uri", f"{uri!r} is not an https:// URL")
    elif not (is_hostname(host) or is_ip(host)):
        v.add("jwks_uri", f"{uri!r}: {host!r} is not a host name or IP address")
    elif mapped_ipv4(host) is not None:  # Envoy's JWKS cluster could never connect
        v.add("jwks_uri", f"{uri!r}: " + mapped_message(host, str(mapped_ipv4(host))))
    elif parts.scheme == "http" and not _is_loopback(host):
        v.add("jwks_uri", f"{uri!r}: plain http is allowed only from a loopback host; use https")
    if parts.username or parts.password:
        v.add("jwks_uri", "must not carry a user name or password")
    if parts.fragment:
        v.add("jwks_uri", "must not have a #fragment")
    if port == 0:
        v.add("jwks_uri", "port 0 is not a port")


def _text(v: Checker, field: str, value: Any) -> bool:
    ok = (
        isinstance(value, str)
        and 0 < len(value) <= MAX_TEXT
        and value == value.strip()
        and all(c.isprintable() and not c.isspace() for c in value)
    )
    return v.require(ok, field, f"{value!r} must be 1-{MAX_TEXT} printable characters without spaces")


def validate_jwt_provider(
    name: Any,
    issuer: Any,
    audiences: Iterable[Any] | None,
    jwks: Any = None,
    jwks_uri: Any = None,
) -> JwtProvider:
    """A `JwtProvider` from raw values, or ValidationError listing every bad field."""
    v = Checker(f'JWT provider "{name}"')
    v.dns_label("name", name)
    _text(v, "issuer", issuer)
    auds = list(audiences or [])
    if not auds:
        v.add("audiences", "at least one audience is required (without one any token of the issuer passes)")
    if len(auds) > MAX_AUDIENCES:
        v.add("audiences", f"{len(auds)} audiences; at most {MAX_AUDIENCES}")
    for i, aud in enumerate(auds):
        if _text(v, f"audiences[{i}]", aud) and auds.index(aud) != i:
            v.add(f"audiences[{i}]", f"{aud!r} is given more than once")
    canonical = None
    if (jwks is None) == (jwks_uri is None):
        v.add("jwks", "give exactly one of a JWKS (inline or file) and a JWKS URI")
    elif jwks is not None:
        canonical = parse_jwks(v, jwks)
    else:
        check_jwks_uri(v, jwks_uri)
    v.done()
    return JwtProvider(
        name=name, issuer=issuer, audiences=tuple(auds), jwks=canonical, jwks_uri=jwks_uri
    )


def _row(conn: Connection, name: str) -> Any:
    t = schema.jwt_providers
    return conn.execute(select(t).where(t.c.name == name)).first()


def get_jwt_provider(conn: Connection, name: str) -> JwtProvider:
    row = _row(conn, name)
    if row is None:
        raise NotFound(f'JWT provider "{name}" not found (see `meshgate jwt list`)')
    return jwt_provider_from_row(row)


def list_jwt_providers(conn: Connection) -> list[JwtProvider]:
    t = schema.jwt_providers
    return [jwt_provider_from_row(r) for r in conn.execute(select(t).order_by(t.c.name))]


def _values(p: JwtProvider) -> dict[str, Any]:
    return {
        "issuer": p.issuer,
        "audiences": json.dumps(list(p.audiences)),
        "jwks": p.jwks,
        "jwks_uri": p.jwks_uri,
    }


def add_jwt_provider(
    w: Write,
    name: Any,
    issuer: Any,
    audiences: Iterable[Any] | None,
    jwks: Any = None,
    jwks_uri: Any = None,
) -> JwtProvider:
    p = validate_jwt_provider(name, issuer, audiences, jwks, jwks_uri)
    if _row(w.conn, p.name) is not None:
        raise AlreadyExists(f'JWT provider "{p.name}" already exists')
    w.conn.execute(
        insert(schema.jwt_providers).values(name=p.name, created_at=time.time(), **_values(p))
    )
    record_row(w, schema.jwt_providers, p.name, None)
    return p


def update_jwt_provider(
    w: Write,
    name: str,
    *,
    issuer: Any = None,
    audiences: Iterable[Any] | None = None,
    jwks: Any = None,
    jwks_uri: Any = None,
) -> JwtProvider:
    """Change the given fields (None keeps one). A new JWKS replaces a JWKS URI and
    the other way round. Records a change only when something differs."""
    cur = get_jwt_provider(w.conn, name)
    if jwks is not None and jwks_uri is not None:
        validate_jwt_provider(name, cur.issuer, cur.audiences, jwks, jwks_uri)  # names both fields
    if jwks is None and jwks_uri is None:
        jwks, jwks_uri = cur.jwks, cur.jwks_uri
    new = validate_jwt_provider(
        name,
        cur.issuer if issuer is None else issuer,
        cur.audiences if audiences is None else list(audiences),
        jwks,
        jwks_uri,
    )
    if new == cur:
        return cur
    update_row(w, schema.jwt_providers, name, **_values(new))
    return new


def routes_using(conn: Connection, name: str) -> list[str]:
    t = schema.edge_routes
    rows = conn.execute(select(t.c.id).where(t.c.auth == f"jwt:{name}").order_by(t.c.id))
    return [r.id for r in rows]


def remove_jwt_provider(w: Write, name: str) -> JwtProvider:
    """Remove a provider; Conflict while edge routes authenticate with it."""
    p = get_jwt_provider(w.conn, name)
    users = routes_using(w.conn, name)
    if users:
        shown = ", ".join(f'"{u}"' for u in users)
        raise Conflict(
            f'JWT provider "{name}" is used by edge route(s) {shown}: remove or change them first'
        )
    delete_row(w, schema.jwt_providers, name)
    return p
