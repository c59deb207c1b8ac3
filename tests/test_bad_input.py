"""Bad input for every field: the right exit code, one clear line naming the field(s),
no traceback, and the database exactly as it was (full `iterdump` before and after).

Exit codes: 2 for usage and validation errors, 1 for domain errors (not found,
already exists, conflict). meshgate's own errors print one `error: ...` line;
click's usage errors print its usage block with one `Error: ...` line.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import Invoke, dump_database

from meshgate.cli import cli


@dataclass(frozen=True)
class Case:
    args: tuple[str, ...]
    exit_code: int
    expect: tuple[str, ...]  # text the error line must contain (field names, values)
    fresh: bool = False  # run against no database at all (init)
    usage: bool = False  # a click usage error (its own format) rather than meshgate's


def case(*args: str, exit: int = 2, expect: tuple[str, ...] | str = (), fresh: bool = False,
         usage: bool = False) -> Case:
    return Case(tuple(args), exit, (expect,) if isinstance(expect, str) else expect, fresh, usage)


INIT = ("init", "--trust-domain")
SVC = ("service", "add", "billing")
INST = ("instance", "add", "orders", "--address", "127.0.0.9", "--inbound-port", "15009",
        "--app-port", "8080")

CASES: dict[str, Case] = {
    # -- init (no database yet: none may be created) --------------------------------------
    "init trust domain upper case": case(*INIT, "Example.org", expect="trust_domain:", fresh=True),
    "init trust domain space": case(*INIT, "exa mple.org", expect="trust_domain:", fresh=True),
    "init trust domain leading dash": case(*INIT, "-bad.org", expect="trust_domain:", fresh=True),
    "init trust domain empty label": case(*INIT, "a..b", expect="trust_domain:", fresh=True),
    "init trust domain empty": case(*INIT, "", expect="trust_domain:", fresh=True),
    "init trust domain uri": case(*INIT, "spiffe://example.org", expect="trust_domain:",
                                  fresh=True),
    "init trust domain too long": case(*INIT, "a" * 254, expect="trust_domain:", fresh=True),
    "init mtls mode": case(*INIT, "example.org", "--mtls-mode", "loose",
                           expect=("mtls_mode:", "'loose'"), fresh=True),
    "init default action": case(*INIT, "example.org", "--default-action", "maybe",
                                expect="default_action:", fresh=True),
    "init ttl words": case(*INIT, "example.org", "--cert-ttl", "1 hour", expect="cert_ttl:",
                           fresh=True),
    "init ttl letters": case(*INIT, "example.org", "--cert-ttl", "abc", expect="cert_ttl:",
                             fresh=True),
    "init ttl too short": case(*INIT, "example.org", "--cert-ttl", "10s",
                               expect=("cert_ttl:", "out of range"), fresh=True),
    "init ttl too long": case(*INIT, "example.org", "--cert-ttl", "400d",
                              expect=("cert_ttl:", "out of range"), fresh=True),
    "init ttl negative": case(*INIT, "example.org", "--cert-ttl", "-5m", expect="cert_ttl:",
                              fresh=True),
    "init ttl fraction": case(*INIT, "example.org", "--cert-ttl", "1.5h", expect="cert_ttl:",
                              fresh=True),
    "init grace too long": case(*INIT, "example.org", "--instance-grace", "2d",
                                expect="instance_grace:", fresh=True),
    "init every field at once": case(
        *INIT, "BAD", "--mtls-mode", "x", "--default-action", "y", "--cert-ttl", "z",
        "--instance-grace", "w", fresh=True,
        expect=("trust_domain:", "mtls_mode:", "default_action:", "cert_ttl:", "instance_grace:"),
    ),
    "init missing trust domain": case("init", usage=True, fresh=True, expect="--trust-domain"),
    "init over an existing mesh": case(*INIT, "other.org", exit=1, expect="already exists"),
    # -- mesh set / show ---------------------------------------------------------------------
    "mesh set mtls mode": case("mesh", "set", "--mtls-mode", "loose", expect="mtls_mode:"),
    "mesh set default action": case("mesh", "set", "--default-action", "x",
                                    expect="default_action:"),
    "mesh set ttl zero": case("mesh", "set", "--cert-ttl", "0s", expect="cert_ttl:"),
    "mesh set ttl letters": case("mesh", "set", "--cert-ttl", "soon", expect="cert_ttl:"),
    "mesh set grace negative": case("mesh", "set", "--instance-grace", "-1",
                                    expect="instance_grace:"),
    "mesh set every field": case(
        "mesh", "set", "--mtls-mode", "a", "--default-action", "b", "--cert-ttl", "c",
        "--instance-grace", "d",
        expect=("mtls_mode:", "default_action:", "cert_ttl:", "instance_grace:"),
    ),
    "mesh set nothing": case("mesh", "set", usage=True, expect="nothing to change"),
    "mesh show bad output": case("mesh", "show", "--output", "xml", usage=True, expect="xml"),
    # -- service add ----------------------------------------------------------------------
    "service name upper case": case("service", "add", "Orders", expect=("name:", "'Orders'")),
    "service name underscore": case("service", "add", "a_b", expect="name:"),
    "service name leading dash": case("service", "add", "--", "-x", expect="name:"),
    "service name like an option": case("service", "add", "-x", usage=True, expect="'-x'"),
    "service name trailing dash": case("service", "add", "x-", expect="name:"),
    "service name dot": case("service", "add", "a.b", expect="name:"),
    "service name too long": case("service", "add", "a" * 64, expect="name:"),
    "service name empty": case("service", "add", "", expect="name:"),
    "service protocol": case(*SVC, "--protocol", "ftp", expect=("protocol:", "'ftp'")),
    "service protocol case": case(*SVC, "--protocol", "HTTP", expect="protocol:"),
    "service port zero": case(*SVC, "--port", "0", expect=("port:", "0 is not a port")),
    "service port too big": case(*SVC, "--port", "70000", expect=("port:", "70000")),
    "service port letters": case(*SVC, "--port", "abc", expect=("port:", "'abc'")),
    "service port negative": case(*SVC, "--port", "-1", expect="port:"),
    "service port fraction": case(*SVC, "--port", "1.5", expect="port:"),
    "service port empty": case(*SVC, "--port", "", expect="port:"),
    "service label no equals": case(*SVC, "--label", "team", expect=("labels:", "KEY=VALUE")),
    "service label empty key": case(*SVC, "--label", "=v", expect="labels:"),
    "service label bad key": case(*SVC, "--label", "bad key=v", expect="labels:"),
    "service label long key": case(*SVC, "--label", "k" * 64 + "=v", expect="labels:"),
    "service label bad value": case(*SVC, "--label", "k=bad value", expect="labels.k:"),
    "service label value dash": case(*SVC, "--label", "k=-v", expect="labels.k:"),
    "service label twice": case(*SVC, "--label", "k=v", "--label", "k=w",
                                expect=("labels.k:", "more than once")),
    "service every field at once": case(
        "service", "add", "Bad_Name", "--protocol", "ftp", "--port", "abc", "--label", "x",
        expect=("name:", "protocol:", "port:", "labels:"),
    ),
    "service exists": case("service", "add", "orders", exit=1,
                           expect='service "orders" already exists'),
    "service add no name": case("service", "add", usage=True, expect="NAME"),
    "service list bad output": case("service", "list", "-o", "csv", usage=True, expect="csv"),
    # -- service update / remove / show -----------------------------------------------------
    "service update missing": case("service", "update", "nope", "--port", "81", exit=1,
                                   expect='service "nope" not found'),
    "service update port": case("service", "update", "orders", "--port", "0", expect="port:"),
    "service update protocol": case("service", "update", "orders", "--protocol", "udp",
                                    expect="protocol:"),
    "service update label": case("service", "update", "orders", "--label", "bad", expect="labels:"),
    "service update unset missing label": case("service", "update", "orders", "--unset-label",
                                               "nope", expect=("labels:", "'nope'")),
    "service update every field": case(
        "service", "update", "orders", "--protocol", "x", "--port", "y",
        expect=("protocol:", "port:"),
    ),
    "service update nothing": case("service", "update", "orders", usage=True,
                                   expect="nothing to change"),
    "service remove missing": case("service", "remove", "nope", exit=1,
                                   expect='service "nope" not found'),
    "service show missing": case("service", "show", "nope", exit=1,
                                 expect='service "nope" not found'),
    # -- instance add --------------------------------------------------------------------
    "instance unknown service": case("instance", "add", "nope", "--address", "127.0.0.1",
                                     "--inbound-port", "1", "--app-port", "2", exit=1,
                                     expect='service "nope" not found'),
    "instance bad service name": case("instance", "add", "Bad_Svc", "--address", "127.0.0.1",
                                      "--inbound-port", "1", "--app-port", "2",
                                      expect="service:"),
    **{
        f"instance address {label}": case(
            "instance", "add", "orders", "--address", value, "--inbound-port", "15009",
            "--app-port", "8080", expect="address:",
        )
        for label, value in {
            "space": "bad host", "bad ip": "999.1.1.1", "empty": "", "scheme": "http://x",
            "brackets": "[::1]", "with port": "127.0.0.1:80", "underscore": "a_b.example",
            "too long": "h" * 254, "bad ipv6": "::1::2",
        }.items()
    },
    "instance address leading dash": case(
        "instance", "add", "orders", "--inbound-port", "15009", "--app-port", "8080",
        "--address=-h", expect="address:",
    ),
    **{
        f"instance {opt} {value}": case(
            *[a for a in INST if a not in (f"--{opt}",)][: INST.index(f"--{opt}")],
            f"--{opt}", value,
            *INST[INST.index(f"--{opt}") + 2:],
            expect=(opt.replace("-", "_") + ":",),
        )
        for opt in ("inbound-port", "app-port")
        for value in ("0", "70000", "abc", "-1")
    },
    **{
        f"instance weight {value}": case(*INST, "--weight", value, expect=("weight:", "1-10000"))
        for value in ("0", "-1", "10001", "abc", "1.5")
    },
    "instance every field at once": case(
        "instance", "add", "orders", "--address", "bad host", "--inbound-port", "0",
        "--app-port", "abc", "--weight", "0",
        expect=("address:", "inbound_port:", "app_port:", "weight:"),
    ),
    "instance duplicate": case("instance", "add", "orders", "--address", "127.0.0.1",
                               "--inbound-port", "15006", "--app-port", "9", exit=1,
                               expect="already exists"),
    "instance missing address": case("instance", "add", "orders", "--inbound-port", "1",
                                     "--app-port", "2", usage=True, expect="--address"),
    # -- instance remove / list -------------------------------------------------------------
    "instance remove letters": case("instance", "remove", "abc", expect=("id:", "'abc'")),
    "instance remove zero": case("instance", "remove", "0", expect="id:"),
    "instance remove missing": case("instance", "remove", "999", exit=1,
                                    expect="instance 999 not found"),
    "instance list unknown service": case("instance", "list", "--service", "nope", exit=1,
                                          expect='service "nope" not found'),
    "instance list bad output": case("instance", "list", "-o", "toml", usage=True, expect="toml"),
    # -- global ---------------------------------------------------------------------------
    "unknown command": case("servce", "list", usage=True, expect="servce"),
    "unknown option": case("service", "list", "--colour", usage=True, expect="--colour"),
}


@pytest.fixture(scope="module")
def seeded_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One mesh with service orders (label team=shop) and instance 127.0.0.1:15006, copied per test."""
    path = tmp_path_factory.mktemp("seed") / "seed.db"
    runner = CliRunner()
    for args in (
        ("init", "--trust-domain", "example.org"),
        ("service", "add", "orders", "--port", "8080", "--label", "team=shop"),
        ("instance", "add", "orders", "--address", "127.0.0.1", "--inbound-port", "15006",
         "--app-port", "8080"),
    ):
        r = runner.invoke(cli, ["--db", str(path), "--actor", "seed", *args],
                          catch_exceptions=False)
        assert r.exit_code == 0, r.output
    assert not Path(f"{path}-wal").exists()  # checkpointed on close: one file is the whole db
    return path


@pytest.mark.parametrize("c", list(CASES.values()), ids=list(CASES))
def test_bad_input(c: Case, run: Invoke, db_path: Path, seeded_template: Path) -> None:
    if not c.fresh:
        shutil.copy(seeded_template, db_path)
    before = dump_database(db_path)

    result = run(*c.args)

    assert result.exit_code == c.exit_code, result.output
    assert "Traceback" not in result.output
    assert result.stdout == "", result.stdout  # nothing half-done was reported
    lines = result.stderr.strip().splitlines()
    if c.usage:
        errors = [line for line in lines if line.startswith("Error:")]
    else:
        assert len(lines) == 1, result.stderr
        errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    for text in c.expect:
        assert text in errors[0], errors[0]
    assert dump_database(db_path) == before
    if c.fresh:
        assert not db_path.exists()


def test_every_violation_is_reported_once_in_field_order(run: Invoke) -> None:
    result = run("init", "--trust-domain", "BAD", "--mtls-mode", "x", "--cert-ttl", "z")
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "error: invalid mesh: trust_domain: 'BAD' is not a trust domain (lowercase DNS name, "
        "e.g. example.org); mtls_mode: 'x' is not one of: strict, permissive; "
        "cert_ttl: 'z' is not a duration (e.g. 90s, 30m, 1h, 1h30m)"
    )


def test_bad_database_url(run: Invoke) -> None:
    result = CliRunner().invoke(cli, ["--db", "notadialect+://::", "service", "list"])
    assert result.exit_code == 1
    assert result.stderr.strip().startswith("error: --db: not a database URL")
    assert "Traceback" not in result.output


def test_a_file_that_is_not_a_database(tmp_path: Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite" * 100)
    before = junk.read_bytes()
    result = CliRunner().invoke(cli, ["--db", str(junk), "init", "--trust-domain", "x.org"])
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith("error: ")
    assert "Traceback" not in result.output
    assert junk.read_bytes() == before
