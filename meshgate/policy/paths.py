"""Request paths as policy rules see them: globs, rule-path checks, HCM normalization.

Rules match the path Envoy's HTTP connection manager hands to its filters,
after the hardening in `hardening.py` (normalize_path, merge_slashes, escaped
slashes rejected). `normalize_request_path` reproduces that normalization so
`policy check` evaluates the same path Envoy's RBAC filter sees; a test runs
the table of tricky paths through the real Envoy and compares.

Globs (`--path`):
- `*` matches within one segment: `/api/*` matches `/api/x`, not `/api/x/y`
  and not `/api/`; `/files/*.json` matches `/files/a.json`.
- `**` as a whole segment matches any number of segments: `/api/**` matches
  `/api/`, `/api/x` and `/api/x/y/z` (not `/api`); `/a/**/z` matches `/a/z`
  and `/a/b/c/z`.
"""

from __future__ import annotations

import string
from dataclasses import dataclass

# Characters a rule path may hold literally (RFC 3986 pchar without '%';
# escapes are refused: Envoy decodes unreserved escapes before RBAC runs).
_PCHARS = set(string.ascii_letters + string.digits + "-._~!$&'()+,;=:@/")
_UNRESERVED = set(string.ascii_letters + string.digits + "-._~")
_HEX = set("0123456789abcdefABCDEF")


def rule_path_problems(value: str, kind: str) -> list[str]:
    """Why `value` cannot be a rule path of `kind` (exact, prefix, glob); [] when fine."""
    problems: list[str] = []
    if not value.startswith("/"):
        return [f"\"{value}\" must start with '/'"]
    allowed = _PCHARS | ({"*"} if kind == "glob" else set())
    bad = sorted({c for c in value if c not in allowed})
    if bad:
        shown = ", ".join(repr(c) for c in bad)
        hint = " (percent-escapes are decoded by Envoy before matching: write the plain character)" if "%" in bad else ""
        if "*" in bad and kind != "glob":
            hint += " ('*' is a wildcard only in --path globs)"
        problems.append(f"\"{value}\" holds characters a path rule cannot use: {shown}{hint}")
    if "//" in value:
        problems.append(f"\"{value}\" holds '//': Envoy merges repeated slashes, so it never matches")
    segments = value.split("/")[1:]
    # a trailing "." or ".." segment of a prefix is a plain prefix of a name (/v1/.well), so only
    # complete segments are dot segments; for a prefix the last segment may be incomplete
    complete = segments if kind != "prefix" else segments[:-1]
    if any(s in (".", "..") for s in complete) or (kind != "prefix" and value.endswith(("/.", "/.."))):
        problems.append(f"\"{value}\" holds a '.' or '..' segment: Envoy resolves them, so it never matches")
    if kind == "glob":
        for seg in segments:
            if "**" in seg and seg != "**":
                problems.append(f"\"{value}\": '**' must be a whole segment (like /api/**)")
                break
        if "*" not in value:
            problems.append(f"\"{value}\" has no '*': use --path-exact or --path-prefix")
    return problems


def _literal(text: str) -> str:
    """RE2-safe escaping: backslash before every punctuation character."""
    return "".join(c if c.isalnum() or c in "/_" else "\\" + c for c in text)


def glob_regex(glob: str) -> str:
    """The RE2 (and Python re) regex, anchored, for a validated glob."""
    segments = glob.split("/")[1:]
    out = ""
    for i, seg in enumerate(segments):
        if seg == "**":
            # trailing: anything below, including nothing; in the middle: zero or more segments
            out += "/.*" if i == len(segments) - 1 else "(?:/[^/]+)*"
        elif seg == "*":
            out += "/[^/]+"
        else:
            # inside a segment '*' matches any run of characters but '/', even none
            out += "/" + "[^/]*".join(_literal(part) for part in seg.split("*"))
    return "^" + out + "$"


@dataclass(frozen=True)
class NormalizedPath:
    """The path Envoy's filters see, or why Envoy refuses the request (HTTP 400)."""

    path: str | None  # without the query string
    rejected: str | None = None


def _decode_unreserved(path: str) -> str:
    """%XX of an unreserved character becomes the character; other escapes stay as written."""
    out: list[str] = []
    i = 0
    while i < len(path):
        c = path[i]
        if c == "%" and i + 2 < len(path) and path[i + 1] in _HEX and path[i + 2] in _HEX:
            ch = chr(int(path[i + 1 : i + 3], 16))
            out.append(ch if ch in _UNRESERVED else path[i : i + 3])
            i += 3
            continue
        out.append(c)
        i += 1
    return "".join(out)


# Characters Envoy (its vendored Chromium URL canonicalizer) percent-encodes in a path.
_ESCAPED = set('"<>`^{|}')


def _canonical_text(segment: str) -> str:
    """Decode unreserved escapes, then escape what the canonicalizer escapes."""
    out: list[str] = []
    for ch in _decode_unreserved(segment):
        if ch in _ESCAPED or ord(ch) <= 0x20 or ord(ch) >= 0x7F:
            out.extend(f"%{b:02X}" for b in ch.encode())
        else:
            out.append(ch)
    return "".join(out)


def _dot_kind(unit: str) -> str | None:
    low = unit.lower()
    if low in (".", "%2e"):
        return "cur"
    if low in ("..", ".%2e", "%2e.", "%2e%2e"):
        return "up"
    return None


def _units(path: str) -> list[tuple[str | None, str]]:
    """(dot kind or None, raw text) per segment, in order.

    Measured on Envoy 1.40 (tests/test_policy_envoy_static.py): a '/'-separated
    segment starting with literal '..;' or '.;' counts as '..' or '.' (Servlet-
    style path parameters); otherwise '\\' separates segments too and only
    '.', '..' and their %2e spellings are dot segments.
    """
    units: list[tuple[str | None, str]] = []
    for seg in path.split("/")[1:]:
        if seg.startswith("..;"):
            units.append(("up", seg))
        elif seg.startswith(".;"):
            units.append(("cur", seg))
        else:
            units.extend((_dot_kind(sub), sub) for sub in seg.split("\\"))
    return units


def _resolve(units: list[tuple[str | None, str]]) -> str:
    out: list[str] = []
    for i, (kind, text) in enumerate(units):
        last = i == len(units) - 1
        if kind == "up" and out:
            out.pop()
        if kind is None:
            out.append(_canonical_text(text))
        elif last:
            out.append("")  # a trailing dot segment leaves a trailing slash
    return "/" + "/".join(out)


def normalize_request_path(raw: str) -> NormalizedPath:
    """Apply the HCM hardening of `hardening.hcm_path_hardening()` to a request path.

    Envoy normalizes (RFC 3986 dot segments, unreserved escapes decoded), then
    merges slashes; a path with an escaped slash, a fragment or %00 gets 400.
    """
    if "#" in raw:
        return NormalizedPath(None, "a '#' fragment in the request target: Envoy rejects it")
    path = raw.split("?", 1)[0]
    if not path.startswith("/"):
        return NormalizedPath(None, f"path {raw!r} does not start with '/'")
    lowered = path.lower()
    if "%2f" in lowered or "%5c" in lowered:
        return NormalizedPath(None, "escaped slash (%2F or %5C) in the path: Envoy rejects it")
    if "%00" in path:
        return NormalizedPath(None, "%00 in the path: Envoy rejects it")
    return NormalizedPath(merge_slashes(_resolve(_units(path))))


def merge_slashes(path: str) -> str:
    """Envoy's merge: keep a leading and a trailing '/', join the non-empty segments.

    So a path of slashes only (`//`, `/a/..//`) stays `//`, as measured.
    """
    if "//" not in path:
        return path
    parts = [p for p in path.split("/") if p]
    return ("/" if path.startswith("/") else "") + "/".join(parts) + ("/" if path.endswith("/") else "")
