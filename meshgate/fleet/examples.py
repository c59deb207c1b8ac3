"""The example bootstraps in envoy/: what `meshgate proxy bootstrap` writes for a sidecar and an edge gateway.

    python -m meshgate.fleet.examples envoy/        # regenerate envoy/sidecar.json and envoy/edge.json

They are made by the real command against a throwaway store; only the two
values that differ per store are replaced by placeholders: the join token
and the mesh trust bundle. tests/test_fleet_examples.py regenerates them and
fails when the committed files drifted from what the command writes.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

TOKEN_PLACEHOLDER = "REPLACE-WITH-THE-JOIN-TOKEN"
ROOTS_PLACEHOLDER = (
    "-----BEGIN CERTIFICATE-----\n"
    "REPLACE WITH THE MESH TRUST BUNDLE (`meshgate ca show --output json`, or the file\n"
    "`meshgate edge cert issue --ca-out` writes); `meshgate proxy bootstrap` fills it in\n"
    "-----END CERTIFICATE-----\n"
)
SERVERS = ("xds-1.example.internal:18000", "xds-2.example.internal:18000")
# file name -> (proxy, `meshgate proxy bootstrap` arguments after the name)
EXAMPLES: dict[str, tuple[str, tuple[str, ...]]] = {
    "sidecar.json": ("orders-1", ("--address", "10.0.0.7", "--inbound-port", "15006", "--app-port", "8080")),
    "edge.json": ("public", ()),
}


def _command(proxy: str, token: str, extra: tuple[str, ...], out: Path) -> list[str]:
    servers = [a for s in SERVERS for a in ("--server", s)]
    return ["proxy", "bootstrap", proxy, "--token", token, *servers, "--admin-port", "9901", *extra,
            "--out", str(out)]


def _placeholders(value: Any, token: str, roots: str) -> Any:
    if isinstance(value, dict):
        return {k: _placeholders(v, token, roots) for k, v in value.items()}
    if isinstance(value, list):
        return [_placeholders(v, token, roots) for v in value]
    if isinstance(value, str):
        return ROOTS_PLACEHOLDER if value == roots else value.replace(token, TOKEN_PLACEHOLDER)
    return value


def render(workdir: Path) -> dict[str, tuple[dict[str, Any], str]]:
    """file name -> (the bootstrap as written, the example text with placeholders)."""
    from meshgate.fleet.demo_fleet import Cli

    cli = Cli(workdir / "meshgate.db")
    cli("init", "--trust-domain", "example.org")
    cli("service", "add", "orders", "--port", "8080")
    tokens = {"orders-1": cli("proxy", "add", "orders-1", "--service", "orders", "--output", "json").json["token"]}
    edge = cli("edge", "add", "public", "--listen", "0.0.0.0:8443").output
    tokens["public"] = next(w for w in edge.split() if w.startswith("mgt_"))
    roots = _trust_bundle(cli.db)
    out: dict[str, tuple[dict[str, Any], str]] = {}
    for name, (proxy, extra) in EXAMPLES.items():
        path = workdir / name
        cli(*_command(proxy, tokens[proxy], extra, path))
        boot = json.loads(path.read_text())
        example = _placeholders(boot, tokens[proxy], roots)
        out[name] = (boot, json.dumps(example, indent=2) + "\n")
    return out


def _trust_bundle(db: Path) -> str:
    """What `meshgate proxy bootstrap` puts in the bootstrap: every root of the mesh."""
    from meshgate.store.db import open_store
    from meshgate.store.world import load_world_conn

    engine = open_store(str(db))
    try:
        with engine.connect() as conn:
            return "".join(load_world_conn(conn).trust_roots_pem)
    finally:
        engine.dispose()


def write(outdir: Path) -> list[Path]:
    outdir.mkdir(parents=True, exist_ok=True)
    written = []
    with tempfile.TemporaryDirectory(prefix="meshgate-examples-") as d:
        for name, (_, text) in render(Path(d)).items():
            (outdir / name).write_text(text)
            written.append(outdir / name)
    return written


if __name__ == "__main__":  # pragma: no cover - exercised by the regeneration command
    for p in write(Path(sys.argv[1] if len(sys.argv) > 1 else "envoy")):
        print(f"wrote {p}")
