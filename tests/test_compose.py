"""compose/: the docker compose demo, checked without Docker (Docker cannot run here).

What is checked: docker-compose.yml parses (PyYAML); compose/setup.sh, run on
the host against temporary directories, writes a bootstrap for every Envoy
service the compose file starts, and each is byte for byte what `meshgate
proxy bootstrap` writes for that proxy, declaring the address compose gives
that container; bootstraps point at the `meshgate` service's xDS port; apps
use the sidecar's app and outbound ports; the gateway listens on the published
port; the wheel's Envoy (the image's version) accepts every bootstrap.
What is not: `docker compose up` itself (the same fleet runs for real, without
Docker, in tests/test_demo.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from meshgate.fleet.demo_fleet import Cli
from meshgate.fleet.envoy import find_envoy

COMPOSE = Path(__file__).resolve().parent.parent / "compose"
MESHGATE = str(Path(sys.executable).parent / "meshgate")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((COMPOSE / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("compose")
    dirs = {"STATE": d / "state", "BOOTSTRAP": d / "bootstrap", "OUT": d / "out"}
    env = {**os.environ, **{k: str(v) for k, v in dirs.items()}, "MESHGATE": MESHGATE, "PYTHON": sys.executable}
    r = subprocess.run(["sh", str(COMPOSE / "setup.sh")], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    again = subprocess.run(["sh", str(COMPOSE / "setup.sh")], env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and "nothing to do" in again.stdout  # a restarted `setup` changes nothing
    return dirs


def envoys(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n: s for n, s in compose["services"].items() if str(s.get("image", "")).startswith("envoyproxy/envoy:")}


def bootstrap_path(service: dict[str, Any]) -> str:
    cmd = service["command"]
    return cmd[cmd.index("-c") + 1]


def test_compose_parses_and_runs_the_official_envoy_image(compose: dict[str, Any]) -> None:
    assert set(envoys(compose)) == {"public", "web-1", "orders-1", "payments-1"}
    for name, svc in envoys(compose).items():
        assert svc["image"].startswith("envoyproxy/envoy:v1.40"), name
        assert "bootstrap:/bootstrap:ro" in svc["volumes"]
        assert bootstrap_path(svc) == f"/bootstrap/{name}.json"
        assert svc["depends_on"]["setup"]["condition"] == "service_completed_successfully"
    serve = compose["services"]["meshgate"]["command"]
    assert serve[serve.index("serve") + 1:serve.index("serve") + 3] == ["--listen", "0.0.0.0:18000"]
    assert compose["services"]["setup"]["command"] == ["sh", "/compose/setup.sh"]


def test_mounted_bootstraps_are_what_proxy_bootstrap_writes(compose: dict[str, Any], setup: dict[str, Path]) -> None:
    cli = Cli(setup["STATE"] / "meshgate.db")
    for name, svc in envoys(compose).items():
        made = setup["BOOTSTRAP"] / Path(bootstrap_path(svc)).name
        assert made.is_file(), f"setup.sh wrote no {made.name} for compose service {name}"
        boot = json.loads(made.read_text())
        token = boot["dynamic_resources"]["ads_config"]["grpc_services"][0]["initial_metadata"][0]["value"].split()[1]
        args = ["proxy", "bootstrap", name, "--token", token, "--server", "meshgate:18000", "--admin-port", "9901"]
        if name != "public":  # a sidecar declares the address compose gives its container
            args += ["--address", svc["networks"]["mesh"]["ipv4_address"], "--inbound-port", "15006",
                     "--app-port", "8080"]
        again = setup["BOOTSTRAP"] / f"check-{name}.json"
        cli(*args, "--out", str(again))
        assert again.read_text() == made.read_text(), name
        assert boot["node"]["id"] == name


def test_apps_and_gateway_use_the_ports_the_store_knows(compose: dict[str, Any], setup: dict[str, Path]) -> None:
    cli = Cli(setup["STATE"] / "meshgate.db")
    proxies = {p["name"]: p for p in cli("proxy", "list", "--output", "json").json}
    for app, sidecar in (("web", "web-1"), ("orders", "orders-1"), ("payments", "payments-1")):
        svc = compose["services"][app]
        assert svc["network_mode"] == f"service:{sidecar}"
        cmd = svc["command"]
        boot = json.loads((setup["BOOTSTRAP"] / f"{sidecar}.json").read_text())
        declared = boot["node"]["metadata"]["meshgate"]["instance"]
        assert int(cmd[cmd.index("--port") + 1]) == declared["app_port"]
        assert cmd[cmd.index("--outbound") + 1] == f"127.0.0.1:{proxies[sidecar]['outbound_port']}"
    listen = proxies["public"]["listen"]
    assert f"127.0.0.1:{listen.rsplit(':', 1)[1]}:{listen.rsplit(':', 1)[1]}" in compose["services"]["public"]["ports"]
    assert (setup["OUT"] / "token.jwt").read_text().count(".") == 2  # a JWT for the README's curl
    assert "BEGIN CERTIFICATE" in (setup["OUT"] / "mesh-root.pem").read_text()


@pytest.mark.envoy
def test_envoy_accepts_every_bootstrap(compose: dict[str, Any], setup: dict[str, Path]) -> None:
    for name in envoys(compose):
        path = setup["BOOTSTRAP"] / f"{name}.json"
        r = subprocess.run([find_envoy(), "--mode", "validate", "-c", str(path), "--disable-hot-restart",
                            "-l", "error"], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, (name, r.stdout, r.stderr)
