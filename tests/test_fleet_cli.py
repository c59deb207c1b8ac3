"""`meshgate proxy run` refuses bad input before starting anything: one line naming every
bad field (exit 2), unknown proxy (exit 1), never a traceback; the envoy_command flags."""

from __future__ import annotations

import json

import pytest

from meshgate.fleet.run import envoy_command, exit_code


@pytest.fixture
def proxy_token(initialized) -> str:  # type: ignore[no-untyped-def]
    assert initialized("service", "add", "orders", "--port", "8080").exit_code == 0
    r = initialized("proxy", "add", "orders-1", "--service", "orders", "--output", "json")
    assert r.exit_code == 0, r.output
    return str(json.loads(r.output)["token"])


def test_bad_options_are_named_together(initialized, proxy_token: str) -> None:  # type: ignore[no-untyped-def]
    r = initialized("proxy", "run", "orders-1", "--token", proxy_token, "--admin-port", "70000",
                    "--concurrency", "0", "--base-id", "-1")
    assert r.exit_code == 2, r.output
    assert "--admin-port: 70000" in r.output and "--concurrency" in r.output and "--base-id" in r.output
    assert "Traceback" not in r.output


def test_bootstrap_errors_come_through(initialized, proxy_token: str) -> None:  # type: ignore[no-untyped-def]
    r = initialized("proxy", "run", "orders-1", "--token", "mgt_wrong")
    assert r.exit_code == 2 and "--token: not the current token" in r.output, r.output
    r = initialized("proxy", "run", "nope", "--token", proxy_token)
    assert r.exit_code == 1 and 'proxy "nope" not found' in r.output, r.output
    r = initialized("proxy", "run", "orders-1", "--token", proxy_token, "--address", "10.0.0.1")
    assert r.exit_code == 2 and "go together" in r.output, r.output
    r = initialized("proxy", "run", "orders-1", "--token", proxy_token, "--log-level", "loud")
    assert r.exit_code == 2, r.output


def test_envoy_command_has_what_several_envoys_on_one_host_need() -> None:
    argv = envoy_command("/tmp/b.json", concurrency=2, log_level="warning", envoy="/bin/envoy")
    assert argv == ["/bin/envoy", "-c", "/tmp/b.json", "--disable-hot-restart", "--concurrency", "2",
                    "-l", "warning"]
    with_base = envoy_command("/tmp/b.json", base_id=7, envoy="/bin/envoy", extra=["--drain-time-s", "1"])
    assert "--disable-hot-restart" not in with_base and with_base[3:5] == ["--base-id", "7"]
    assert with_base[-2:] == ["--drain-time-s", "1"]
    assert (exit_code(0), exit_code(1), exit_code(-9), exit_code(-15)) == (0, 1, 137, 143)
