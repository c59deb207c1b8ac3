"""Hostile input: every file of tests/corpus/ (malformed CLI arguments and YAML
documents, generated and hand-written) against one seeded mesh.

For each: never a traceback, exit 1 or 2, nothing on stdout, a clear error on
stderr naming what is wrong (meshgate's `error: ...` line, its multi-problem
block for config files, or click's usage `Error: ...` line), and the database
exactly as it was (full `iterdump` compared). The CLI runs in process (click's
CliRunner); a handful run as real `meshgate` subprocesses too.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from meshgate.cli import cli
from tests.conftest import dump_database
from tests.corpus import generate
from tests.edge_kit import MeshCa
from tests.mesh_kit import MESHGATE

CORPUS = Path(__file__).parent / "corpus"
FILES = CORPUS / "files"
CLI_CASES = sorted(p.stem for p in (CORPUS / "cli").glob("*.json"))
YAML_CASES = sorted(p.name for p in (CORPUS / "yaml").glob("*.yaml"))


@dataclass
class Seeded:
    db: Path
    template: Path
    dump: str

    def restore(self) -> None:
        for suffix in ("-wal", "-shm"):
            Path(f"{self.db}{suffix}").unlink(missing_ok=True)
        shutil.copy(self.template, self.db)


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seeded]:
    """orders (http, an instance, sidecar orders-1), billing (grpc), cache (tcp); JWT
    provider idp; gateway public (client CA, certificate, a jwt and an mtls route);
    policy orders-to-billing."""
    work = tmp_path_factory.mktemp("hostile")
    db = work / "mesh.db"
    (work / "clients.pem").write_text(MeshCa(trust_domain="clients.example").pem)
    runner = CliRunner()
    for args in (
        ("init", "--trust-domain", "example.org"),
        ("service", "add", "orders", "--port", "8080", "--label", "team=shop"),
        ("service", "add", "billing", "--protocol", "grpc", "--port", "9090"),
        ("service", "add", "cache", "--protocol", "tcp", "--port", "6379"),
        ("instance", "add", "orders", "--address", "127.0.0.1", "--inbound-port", "15006", "--app-port", "8080"),
        ("proxy", "add", "orders-1", "--service", "orders"),
        ("jwt", "add", "idp", "--issuer", "https://idp.example.com/", "--audience", "orders-api",
         "--jwks-file", str(FILES / "jwks.json")),
        ("edge", "add", "public", "--listen", "127.0.0.1:8443", "--client-ca", str(work / "clients.pem")),
        ("edge", "cert", "issue", "--gateway", "public", "--host", "api.example.com"),
        ("edge", "route", "add", "public", "--host", "api.example.com", "--prefix", "/orders", "--to", "orders",
         "--auth", "jwt:idp", "--id", "public-orders"),
        ("edge", "route", "add", "public", "--host", "machines.example.com", "--prefix", "/", "--to", "orders",
         "--auth", "mtls", "--id", "machines"),
        ("policy", "allow", "--from", "orders", "--to", "billing", "--grpc-method", "shop.Billing/Charge",
         "--id", "orders-to-billing"),
    ):
        r = runner.invoke(cli, ["--db", str(db), *args], catch_exceptions=False)
        assert r.exit_code == 0, (args, r.output)
    template = work / "template.db"
    shutil.copy(db, template)
    yield Seeded(db, template, dump_database(db))


def check_refused(result: Result | subprocess.CompletedProcess[str], expect: list[str]) -> str:
    """The common verdict: exit 1/2, no output, one clear error naming one of `expect`."""
    if isinstance(result, Result):
        code, out, err = result.exit_code, result.stdout, result.stderr
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            import traceback

            raise AssertionError("".join(traceback.format_exception(result.exception)))
    else:
        code, out, err = result.returncode, result.stdout, result.stderr
    assert "Traceback" not in err + out, err
    assert code in (1, 2), (code, out, err)
    assert out == "", out
    lines = err.rstrip("\n").splitlines()
    usage = [ln for ln in lines if ln.startswith("Error: ")]
    if usage:  # click: usage block, then one `Error: ...` line
        assert len(usage) == 1, err
        message = usage[0]
    else:
        assert lines and lines[0].startswith("error: "), err
        # one line, or a config file's block: a header ending in ':' then indented problems
        assert len(lines) == 1 or (lines[0].endswith(":") and all(ln.startswith("  ") for ln in lines[1:])), err
        message = "\n".join(lines)
    lowered = message.lower()
    assert any(e.lower() in lowered for e in expect), f"names none of {expect}: {message[:500]}"
    return message


def _unchanged(seeded: Seeded) -> None:
    now = dump_database(seeded.db)
    if now != seeded.dump:
        seeded.restore()  # keep the next cases meaningful
        raise AssertionError("the database changed")


def _load_cli(name: str) -> tuple[list[str], list[str], str | None]:
    case = json.loads((CORPUS / "cli" / f"{name}.json").read_text())
    args = [a.replace("{files}", str(FILES)) for a in case["args"]]
    return args, case["expect"], case.get("stdin")


@pytest.mark.parametrize("name", CLI_CASES)
def test_malformed_arguments_are_refused_and_change_nothing(name: str, seeded: Seeded) -> None:
    args, expect, stdin = _load_cli(name)
    result = CliRunner().invoke(cli, ["--db", str(seeded.db), *args], input=stdin)
    check_refused(result, expect)
    _unchanged(seeded)


@pytest.mark.parametrize("name", YAML_CASES)
def test_malformed_config_files_are_refused_and_change_nothing(name: str, seeded: Seeded) -> None:
    path = str(CORPUS / "yaml" / name)
    for command in ("apply", "plan"):
        result = CliRunner().invoke(cli, ["--db", str(seeded.db), command, "-f", path])
        check_refused(result, [path])
        _unchanged(seeded)


@pytest.mark.parametrize("name", ["hand-billion-laughs.yaml", "hand-python-object-apply.yaml",
                                  "hand-raw-nul-byte.yaml", "hand-deep-sequence.yaml"])
def test_malformed_config_on_stdin(name: str, seeded: Seeded) -> None:
    data = (CORPUS / "yaml" / name).read_bytes()
    result = CliRunner().invoke(cli, ["--db", str(seeded.db), "apply", "-f", "-"], input=data)
    check_refused(result, ["<stdin>"])
    _unchanged(seeded)


SUBPROCESS_CLI = ["gen-service-add-port-06", "gen-instance-add-address-08", "gen-jwt-add-jwks-uri-08",
                  "hand-instance-add-unicode-digits-everywhere", "hand-init-over-existing",
                  "hand-apply-stdin-garbage"]
SUBPROCESS_YAML = ["hand-billion-laughs.yaml", "hand-deep-mapping.yaml", "hand-python-object-apply.yaml",
                   "hand-invalid-utf8.yaml"]


def test_a_handful_as_real_processes(seeded: Seeded, tmp_path: Path) -> None:
    env = {**os.environ, "MESHGATE_ACTOR": "test@meshgate"}
    pwned = Path("/tmp/meshgate-pwned")
    pwned.unlink(missing_ok=True)
    for name in SUBPROCESS_CLI:
        args, expect, stdin = _load_cli(name)
        assert not any("\x00" in a for a in args), name  # argv cannot carry NUL bytes
        r = subprocess.run([MESHGATE, "--db", str(seeded.db), *args], input=stdin, capture_output=True,
                           text=True, timeout=60, env=env)
        check_refused(r, expect)
        _unchanged(seeded)
    for name in SUBPROCESS_YAML:
        path = str(CORPUS / "yaml" / name)
        r = subprocess.run([MESHGATE, "--db", str(seeded.db), "apply", "-f", path], capture_output=True,
                           text=True, timeout=60, env=env)
        check_refused(r, [path])
        _unchanged(seeded)
    assert not pwned.exists()  # no YAML tag ran a command


def test_the_corpus_is_large_and_the_generated_half_is_current() -> None:
    assert len(CLI_CASES) + len(YAML_CASES) >= 200
    expected_cli = generate.cli_cases()
    on_disk = {p.stem: json.loads(p.read_text()) for p in (CORPUS / "cli").glob("gen-*.json")}
    assert on_disk == expected_cli, "run: python tests/corpus/generate.py"
    expected_yaml = generate.yaml_cases()
    on_disk_yaml = {p.stem: p.read_text() for p in (CORPUS / "yaml").glob("gen-*.yaml")}
    assert on_disk_yaml == expected_yaml, "run: python tests/corpus/generate.py"
    hand = [p for p in (CORPUS / "cli").glob("hand-*.json")] + [p for p in (CORPUS / "yaml").glob("hand-*")]
    assert len(hand) >= 50
