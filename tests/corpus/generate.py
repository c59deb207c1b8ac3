"""Writes the generated half of the hostile-input corpus (files named gen-*).

    python tests/corpus/generate.py      # rewrites tests/corpus/{cli,yaml}/gen-*

The other half is written by hand (hand-*). tests/test_hostile_input.py runs
every file against a seeded mesh and checks that the generated files are what
this script makes (so the two never drift apart).

cli/*.json: {"args": [...], "expect": [...]} - `args` after `meshgate --db DB`;
    `{files}` in an argument is tests/corpus/files. The error must name one of
    `expect` (a field or option; case-insensitive).
yaml/*.yaml: one file for `meshgate apply -f` and `meshgate plan -f`.

Systematic cases take each option of each writing command (values that are
valid on their own, against the seeded mesh in test_hostile_input.py) and
replace one of them with hostile values of the option's kind: empty, control
characters, NUL bytes, very long text, non-ASCII digits, huge numbers, signs,
exponents, option-like text, injection-looking text. YAML cases put values of
every wrong type into every field of every kind.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
LONG = "a" * 70_000

# hostile values by the kind of option they go into (each one invalid for that kind)
TEXT = ["", " ", "\x00", "a\x00b", LONG, "UPPER", "a b", "\U0001f4a5", "\u202eevil", "x\r\ninjected: 1",
        "../../etc/passwd", "'; DROP TABLE services; --", "${HOME}", "é", "a..b", "-x"]
INTEGER = ["", "abc", "0", "-1", "65536", "99999999999999999999", "9" * 5000, "1e3", "0x50", "1.5",
           "\u0668\u0660", "\uff18\uff10", "\x00", "80\x00", "--1", "1_000"]
DURATION = ["", "abc", "-1s", "1.5h", "9" * 5000, "99999999999999999999d", "1s1h", "\u0663s", "1h1h",
            "0s", "\x00", "1 h"]
PATH = ["", "no-slash", "/a\x00", "/a b", "/\u202e", "/a?x=1", "/a#frag", "/a/../b", "/***",
        "/a\r\nb", "/%00", "//a"]
HOST = ["", "*", "*.*.example.com", "a_b.example.com", "-a.example.com", "a\x00.example.com",
        "a" * 300 + ".com", "http://a.example.com", "a.example.com:443", "\u0430pple.com", "a b.com"]
HOST_PORT = ["", "x", "127.0.0.1", "127.0.0.1:0", "127.0.0.1:65536", "[::1:80", "127.0.0.1:\uff18\uff10",
             ":80", "127.0.0.1:80:80", "127.0.0.1:" + "9" * 5000, "\x00:80"]
NAME = [v for v in TEXT if v != "-x"] + ["a_b", "a.b", "x" * 64, "-", "1-"]
FILE = ["{files}/empty", "{files}/binary.bin", "{files}/nul.txt", "{files}/garbage.pem",
        "{files}/does-not-exist", "{files}", "/dev/null"]

# (id, args with one "@" marking the option under attack, its kind, expected names)
# Everything else in `args` is valid against the seeded mesh.
TEMPLATES: list[tuple[str, list[str], list[str], list[str]]] = [
    ("service-add-name", ["service", "add", "@", "--port", "80"], NAME, ["name"]),
    ("service-add-port", ["service", "add", "svc", "--port", "@"], INTEGER, ["port"]),
    ("service-add-protocol", ["service", "add", "svc", "--protocol", "@"], TEXT + ["HTTP", "udp"], ["protocol"]),
    ("service-add-label", ["service", "add", "svc", "--label", "@"],
     ["", "=", "k", "=v", "k=v=w", "k=\x00", "\x00=v", "k=" + LONG, "k" * 300 + "=v", "k=v\r\nx"], ["label"]),
    ("service-update-port", ["service", "update", "orders", "--port", "@"], INTEGER, ["port"]),
    ("instance-add-address", ["instance", "add", "orders", "--address", "@", "--inbound-port", "15100",
                              "--app-port", "8080"],
     [v for v in TEXT if v not in ("UPPER", "é", "-x")] + ["999.1.1.1", "[::1]", "127.0.0.1:80", "::1::2",
                                                          "1" * 5000], ["address"]),
    ("instance-add-inbound", ["instance", "add", "orders", "--address", "127.0.0.9", "--inbound-port", "@",
                              "--app-port", "8080"], INTEGER, ["inbound_port", "inbound-port"]),
    ("instance-add-weight", ["instance", "add", "orders", "--address", "127.0.0.9", "--inbound-port", "15100",
                             "--app-port", "8080", "--weight", "@"], INTEGER + ["10001"], ["weight"]),
    ("instance-remove", ["instance", "remove", "@"], INTEGER + ["999"], ["id", "instance"]),
    ("policy-from", ["policy", "allow", "--from", "@", "--to", "orders"],
     [v for v in TEXT if v != "-x"] + [",,", "edge:", "edge:nope", "spiffe://example.org/svc/x", "**"],
     ["sources", "from", "not found", "unknown"]),
    ("policy-to", ["policy", "allow", "--from", "billing", "--to", "@"], NAME, ["target", "to", "not found"]),
    ("policy-method", ["policy", "allow", "--from", "billing", "--to", "orders", "--method", "@"],
     ["", "FETCH", "get\x00", "G ET", LONG, "\u0131"], ["method"]),
    ("policy-path-prefix", ["policy", "allow", "--from", "billing", "--to", "orders", "--path-prefix", "@"],
     PATH, ["paths"]),
    ("policy-path-exact", ["policy", "deny", "--from", "billing", "--to", "orders", "--path-exact", "@"],
     PATH, ["paths"]),
    ("policy-path-glob", ["policy", "allow", "--from", "billing", "--to", "orders", "--path", "@"],
     PATH + ["/a/**b", "/a/*/**/x**"], ["paths"]),
    ("policy-header", ["policy", "allow", "--from", "billing", "--to", "orders", "--header", "@"],
     ["", "x", "=v", ":authority=x", "X Y=z", "x\r\nevil=1", "x=\r\n", "x=\x00", "x" * 300 + "=v"], ["header"]),
    ("policy-grpc", ["policy", "allow", "--from", "orders", "--to", "billing", "--grpc-method", "@"],
     ["", "a", "a/b/c", "/Method", "pkg.Svc/", "\x00/x", "pkg.Svc/M\u00e9", "pkg.Svc/**"], ["grpc"]),
    ("policy-grpc-on-http", ["policy", "allow", "--from", "billing", "--to", "orders", "--grpc-method", "@"],
     ["pkg.Svc/Get"], ["grpc"]),
    ("policy-id", ["policy", "allow", "--from", "billing", "--to", "orders", "--id", "@"], NAME, ["id"]),
    ("policy-remove", ["policy", "remove", "@"], NAME, ["not found", "policy"]),
    ("edge-add-listen", ["edge", "add", "gw", "--listen", "@"], HOST_PORT, ["listen"]),
    ("edge-add-redirect", ["edge", "add", "gw", "--listen", "127.0.0.1:9443", "--http-redirect-port", "@"],
     INTEGER, ["redirect"]),
    ("edge-add-client-ca", ["edge", "add", "gw", "--listen", "127.0.0.1:9443", "--client-ca", "@"], FILE,
     ["client_ca", "client-ca"]),
    ("edge-update-listen", ["edge", "update", "public", "--listen", "@"], HOST_PORT, ["listen"]),
    ("route-host", ["edge", "route", "add", "public", "--host", "@", "--prefix", "/x", "--to", "orders",
                    "--auth", "none"], HOST, ["host"]),
    ("route-prefix", ["edge", "route", "add", "public", "--host", "new.example.com", "--prefix", "@", "--to",
                      "orders", "--auth", "none"], PATH, ["prefix"]),
    ("route-auth", ["edge", "route", "add", "public", "--host", "new.example.com", "--prefix", "/", "--to",
                    "orders", "--auth", "@"],
     ["", "jwt:", "jwt:nope", "JWT:idp", "mtls ", "basic", "jwt:idp\x00", "none\r\n"], ["auth", "jwt provider"]),
    ("route-rate", ["edge", "route", "add", "public", "--host", "new.example.com", "--prefix", "/", "--to",
                    "orders", "--auth", "none", "--rate", "@"],
     ["", "0/s", "1/0s", "-1/s", "1/s/s", "1.5/s", "99999999999999999999/s", "1/99999999999999999999s",
      "9" * 5000 + "/s", "\u0661/s", "1/fortnight", "1/", "/s"], ["rate"]),
    ("route-claim", ["edge", "route", "add", "public", "--host", "new.example.com", "--prefix", "/", "--to",
                     "orders", "--auth", "jwt:idp", "--claim", "@"],
     ["", "x", "=v", "k=", "k =v", "k=\x00", "k" * 300 + "=v", "k=" + LONG], ["claim"]),
    ("route-to", ["edge", "route", "add", "public", "--host", "new.example.com", "--prefix", "/", "--to", "@",
                  "--auth", "none"], NAME, ["service", "not found", "to"]),
    ("cert-issue-host", ["edge", "cert", "issue", "--gateway", "public", "--host", "@"], HOST, ["host"]),
    ("cert-issue-days", ["edge", "cert", "issue", "--gateway", "public", "--host", "new.example.com",
                         "--days", "@"], INTEGER + ["398"], ["days"]),
    ("cert-import", ["edge", "cert", "import", "--gateway", "public", "--host", "api.example.com", "--cert", "@",
                     "--key", "{files}/garbage.pem"], FILE, ["cert"]),
    ("jwt-add-issuer", ["jwt", "add", "j2", "--issuer", "@", "--audience", "api", "--jwks-file",
                        "{files}/jwks.json"], ["", " ", "\x00", "a b", "x" * 600], ["issuer"]),
    ("jwt-add-jwks-file", ["jwt", "add", "j2", "--issuer", "https://i.example/", "--audience", "api",
                           "--jwks-file", "@"],
     FILE + ["{files}/jwks-private.json", "{files}/jwks-empty.json", "{files}/jwks-not-keys.json",
             "{files}/jwks-huge-n.json"], ["jwks"]),
    ("jwt-add-jwks-uri", ["jwt", "add", "j2", "--issuer", "https://i.example/", "--audience", "api",
                          "--jwks-uri", "@"],
     ["", "file:///etc/passwd", "http://evil.example.com/k", "https://", "https://[::1", "https://x:99999/",
      "https://" + LONG, "javascript:alert(1)", "https://a b/", "https://x/\x00"], ["jwks_uri", "jwks-uri"]),
    ("jwt-add-audience", ["jwt", "add", "j2", "--issuer", "https://i.example/", "--audience", "@",
                          "--jwks-file", "{files}/jwks.json"], ["", "\x00", "a b", "x" * 600], ["audience"]),
    ("mesh-cert-ttl", ["mesh", "set", "--cert-ttl", "@"], DURATION, ["cert_ttl", "cert-ttl"]),
    ("mesh-grace", ["mesh", "set", "--instance-grace", "@"], ["abc", "-1s", "9" * 5000, "\u0663s", "2d"],
     ["instance_grace", "instance-grace"]),
    ("mesh-mtls", ["mesh", "set", "--mtls-mode", "@"], ["", "STRICT", "none", "\x00", LONG], ["mtls"]),
    ("proxy-add-name", ["proxy", "add", "@", "--service", "orders"], NAME, ["name"]),
    ("proxy-add-outbound", ["proxy", "add", "p2", "--service", "orders", "--outbound-port", "@"], INTEGER,
     ["outbound"]),
    ("proxy-revoke", ["proxy", "revoke", "@"], NAME, ["not found", "proxy", "name"]),
    ("ca-import", ["ca", "import", "--cert", "@", "--key", "{files}/garbage.pem"], FILE, ["cert"]),
    ("rollback", ["rollback", "@", "--yes"], INTEGER + ["999"], ["rev", "revision"]),
    ("history-limit", ["history", "--limit", "@"], ["0", "-1", "abc", "1e3", ""], ["limit"]),
]


def _case_id(template: str, n: int) -> str:
    return f"gen-{template}-{n:02d}"


def _expect(value: str, names: list[str]) -> list[str]:
    """A value click reads as an option, or one it cannot convert, gets click's usage
    error naming the value or the option; validation names the field."""
    return names + ([value] if value.startswith("-") and value != "-" else [])


def pick(values: list[str], n: int, offset: int) -> list[tuple[int, str]]:
    """`n` of `values` (all when fewer), spread out, starting at `offset`: each template
    gets a different slice of a long list, so together they use all of it."""
    if len(values) <= n:
        return list(enumerate(values))
    return sorted({(i := (offset + k * len(values) // n) % len(values)): values[i] for k in range(n)}.items())


PER_TEMPLATE = 6


def cli_cases() -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for t, (template, args, values, names) in enumerate(TEMPLATES):
        for n, value in pick(values, PER_TEMPLATE, t):
            case_args = [value if a == "@" else a for a in args]
            out[_case_id(template, n)] = {"args": case_args, "expect": _expect(value, names)}
    return out


# -- YAML -------------------------------------------------------------------------

VALID_DOCS: dict[str, dict[str, str]] = {  # valid documents (YAML source of each field)
    "Service": {"name": "svc", "protocol": "http", "port": "8080", "labels": "{team: shop}"},
    "Instance": {"service": "orders", "address": "127.0.0.9", "inbound_port": "15100", "app_port": "8080",
                 "weight": "2"},
    "Sidecar": {"name": "p2", "service": "orders", "outbound_port": "15002"},
    "Gateway": {"name": "gw", "listen": "127.0.0.1:9443", "http_redirect_port": "9080"},
    "JwtProvider": {"name": "j2", "issuer": "https://i.example/", "audiences": "[api]",
                    "jwks_uri": "https://i.example/jwks.json"},
    "Policy": {"id": "p1", "action": "allow", "sources": "[billing]", "target": "orders",
               "methods": "[GET]", "paths": "[{prefix: /api}]", "headers": "{x-t: '1'}"},
    "EdgeRoute": {"id": "r1", "gateway": "public", "host": "new.example.com", "prefix": "/x",
                  "service": "orders", "auth": "none", "rate": "10/s"},
    "Mesh": {"mtls_mode": "strict", "default_action": "deny", "cert_ttl": "1h", "instance_grace": "30s"},
}
WRONG_TYPES: dict[str, str] = {  # YAML source of a value of each wrong type
    "list": "[1, 2]",
    "map": "{a: b}",
    "bool": "yes",
    "null": "~",
    "huge": "1" + "0" * 40,
    "float": "1.5",
    "nan": ".nan",
    "inf": "-.inf",
    "binary": "!!binary aGVsbG8=",
    "timestamp": "2001-12-14t21:59:43.10-05:00",
    "set": "!!set {a, b}",
    "python": "!!python/object/apply:os.system ['echo pwned']",
    "nul": '"a\\0b"',
    "long": "x" * 20_000,
    "unicode": '"\\u202e\\U0001f4a5"',
    "negative": "-80",
}


def _doc(kind: str, fields: dict[str, str]) -> str:
    return "kind: " + kind + "\n" + "".join(f"{k}: {v}\n" for k, v in fields.items())


def yaml_cases() -> dict[str, str]:
    out: dict[str, str] = {}
    types = list(WRONG_TYPES)
    offset = 0
    for kind, fields in VALID_DOCS.items():
        for field in fields:
            offset += 3
            for _, label in pick(types, 3, offset):  # 3 wrong types per field, all types overall
                if label == "map" and field in ("labels", "headers"):
                    label = "list"  # a mapping is the right type there
                value = WRONG_TYPES[label]
                doc = dict(fields)
                doc[field] = value
                out[f"gen-{kind.lower()}-{field}-{label}"] = _doc(kind, doc)
        required = {"Service": ["name"], "Instance": ["address"], "Sidecar": ["service"],
                    "Gateway": ["listen"], "JwtProvider": ["audiences"], "Policy": ["action", "target"],
                    "EdgeRoute": ["auth"], "Mesh": []}[kind]
        for field in required:
            out[f"gen-{kind.lower()}-missing-{field}"] = _doc(kind, {k: v for k, v in fields.items() if k != field})
        out[f"gen-{kind.lower()}-unknown-field"] = _doc(kind, {**fields, "colour": "blue"})
    return out


def write_all() -> tuple[int, int]:
    cli_dir, yaml_dir = HERE / "cli", HERE / "yaml"
    cli_dir.mkdir(exist_ok=True)
    yaml_dir.mkdir(exist_ok=True)
    for old in [*cli_dir.glob("gen-*"), *yaml_dir.glob("gen-*")]:
        old.unlink()
    cli = cli_cases()
    for name, case in cli.items():
        (cli_dir / f"{name}.json").write_text(json.dumps(case, ensure_ascii=True) + "\n")
    ys = yaml_cases()
    for name, text in ys.items():
        (yaml_dir / f"{name}.yaml").write_text(text)
    return len(cli), len(ys)


if __name__ == "__main__":
    n_cli, n_yaml = write_all()
    print(f"wrote {n_cli} CLI cases and {n_yaml} YAML documents under {HERE}")
