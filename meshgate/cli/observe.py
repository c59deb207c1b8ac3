"""`meshgate top` (live edge table from the admin API) and `meshgate events` (denials)."""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from typing import Any

import click

from meshgate.cli.context import CliContext, pass_ctx
from meshgate.cli.output import emit, output_option
from meshgate.durations import parse_duration
from meshgate.errors import MeshgateError, ValidationError, Violation
from meshgate.validation import split_host_port

DEFAULT_ADMIN = "127.0.0.1:18001"
SORTS = ("rps", "errors", "latency", "denied", "name")
TOP_COLUMNS = ("caller", "callee", "rps", "success", "p50", "p90", "p99", "denied",
               "tls_fail", "requests")
EVENT_COLUMNS = ("time", "caller", "callee", "route", "method", "path", "status", "rule_id",
                 "reason")


def _admin_url(admin: str) -> str:
    if split_host_port(admin) is None:
        raise ValidationError([Violation("--admin", f"{admin!r} is not HOST:PORT "
                                         "(e.g. 127.0.0.1:18001)")], "option")
    return f"http://{admin}"


def fetch_edges(admin: str, timeout: float = 3.0) -> dict[str, Any]:
    url = _admin_url(admin) + "/api/edges"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 - admin address
            return json.loads(r.read())
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise MeshgateError(
            f"cannot read {url}: {reason} (is `meshgate serve --admin {admin}` running?)"
        ) from exc


def _sort_key(sort: str):  # type: ignore[no-untyped-def]
    if sort == "name":
        return lambda e: (e["caller"], e["callee"])
    if sort == "errors":
        return lambda e: (-(1 - (e["success_rate"] if e["success_rate"] is not None else 1)),
                          e["caller"], e["callee"])
    if sort == "latency":
        return lambda e: (-(e["p99_ms"] or 0), e["caller"], e["callee"])
    if sort == "denied":
        return lambda e: (-e["denied"], -e["denied_total"], e["caller"], e["callee"])
    return lambda e: (-e["rps"], e["caller"], e["callee"])


def _fmt_ms(v: float | None) -> str:
    return "-" if v is None else (f"{v:.1f}ms" if v < 10 else f"{v:.0f}ms")


def _top_rows(edges: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{
        "caller": e["caller"], "callee": e["callee"], "rps": f"{e['rps']:.2f}",
        "success": "-" if e["success_rate"] is None else f"{e['success_rate'] * 100:.1f}%",
        "p50": _fmt_ms(e["p50_ms"]), "p90": _fmt_ms(e["p90_ms"]), "p99": _fmt_ms(e["p99_ms"]),
        "denied": f"{e['denied']} ({e['denied_total']})",
        "tls_fail": str(e["tls_failures_total"]), "requests": str(e["requests_total"]),
    } for e in edges]


def _top_table(data: dict[str, Any], sort: str, admin: str):  # type: ignore[no-untyped-def]
    from rich.table import Table

    edges = sorted(data.get("edges", []), key=_sort_key(sort))
    table = Table(title=f"{admin} · last {data.get('window_seconds', 0):g}s · "
                        f"{time.strftime('%H:%M:%S')}",
                  caption="denied: in window (since start)", title_justify="left")
    for c in TOP_COLUMNS:
        table.add_column(c, justify="left" if c in ("caller", "callee") else "right",
                         no_wrap=True, min_width=len(c))
    for e, row in zip(edges, _top_rows(edges), strict=True):
        style = None
        if e["success_rate"] is not None and e["success_rate"] < 0.95:
            style = "red"
        elif e["denied"]:
            style = "yellow"
        table.add_row(*(row[c] for c in TOP_COLUMNS), style=style)
    if not edges:
        table.add_row("(no traffic yet)", *[""] * (len(TOP_COLUMNS) - 1))
    return table


def _console():  # type: ignore[no-untyped-def]
    from rich.console import Console

    console = Console(soft_wrap=True)
    if not console.is_terminal:  # piped: natural width, like every other table
        console = Console(soft_wrap=True, width=1000)
    return console


@click.command("top")
@click.option("--admin", default=None, metavar="HOST:PORT",
              help=f"Admin address of `meshgate serve` (default {DEFAULT_ADMIN}; "
                   "env MESHGATE_ADMIN).")
@click.option("--interval", default=2.0, show_default=True, type=click.FloatRange(0.2, 3600),
              help="Seconds between refreshes.")
@click.option("--sort", type=click.Choice(SORTS), default="rps", show_default=True,
              help="Order of the rows.")
@click.option("--once", is_flag=True, help="Print the table once and exit (for scripts).")
@output_option
def top(admin: str | None, interval: float, sort: str, once: bool, output: str) -> None:
    """Live table of service-to-service traffic: one row per caller -> callee edge.

    Requests/s, success rate (non-5xx), p50/p90/p99 latency over the server's
    telemetry window, denied calls and TLS failures, as seen by the caller's
    sidecar. Reads the admin API of a running `meshgate serve`.

    \b
    Examples:
        meshgate top
        meshgate top --once --output json --admin 127.0.0.1:18001
    """
    admin = admin or os.environ.get("MESHGATE_ADMIN") or DEFAULT_ADMIN
    data = fetch_edges(admin)
    if once or output != "table":
        if output != "table":
            emit(sorted(data.get("edges", []), key=_sort_key(sort)), output)
            return
        _console().print(_top_table(data, sort, admin))
        return
    from rich.live import Live

    try:
        with Live(_top_table(data, sort, admin), console=_console(), auto_refresh=False,
                  screen=False) as live:
            while True:
                time.sleep(interval)
                try:
                    data = fetch_edges(admin)
                except MeshgateError as exc:
                    live.console.print(f"[red]{exc}[/red]")
                    continue
                live.update(_top_table(data, sort, admin), refresh=True)
    except KeyboardInterrupt:
        pass


def _since(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        raise ValidationError([Violation("--since", str(exc))], "option") from None
    if seconds <= 0:
        raise ValidationError([Violation("--since", "must be more than 0s")], "option")
    return time.time() - seconds


@click.command("events")
@click.option("--denied", is_flag=True, default=True,
              help="Denied attempts (RBAC, JWT, rate limits, audit-mode would-be denials); "
                   "the only kind of event recorded today, so it is the default.")
@click.option("--since", default=None, metavar="DURATION",
              help="Only events newer than this (e.g. 10m, 1h, 2d).")
@click.option("--caller", default=None, help="Only calls from this caller.")
@click.option("--callee", default=None, help="Only calls to this service.")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 100000),
              help="At most this many events, newest first.")
@output_option
@pass_ctx
def events(ctx: CliContext, denied: bool, since: str | None, caller: str | None,
           callee: str | None, limit: int, output: str) -> None:
    """Recent denied attempts: caller, callee or route, method, path, rule id, time.

    Read from the store's bounded `denial_events` table (SQL view `v_denials`),
    which `meshgate serve` fills from the proxies' access logs. A rule id of
    `-` with reason "default deny" means no allow rule matched.

    \b
    Examples:
        meshgate events --denied --since 10m
        meshgate events --denied --callee orders --output json
        sqlite3 meshgate.db "SELECT caller, rule_id, COUNT(*) FROM v_denials GROUP BY 1, 2"
    """
    from meshgate.telemetry.denials import read

    cutoff = _since(since)
    rows = read(ctx.engine, since=cutoff, limit=limit, caller=caller, callee=callee)
    for r in rows:
        r["time"] = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(r["at"]))
    if output == "table":
        emit(rows, output, columns=EVENT_COLUMNS)
        return
    emit([{k: v for k, v in r.items()} for r in rows], output)
