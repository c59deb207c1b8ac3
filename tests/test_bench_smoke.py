"""The benchmarks of bench/ at smoke size: convergence with real Envoys, data-plane
overhead (wrk through plain and meshgate Envoys), idle control plane. Each runs end
to end and produces its figures; tests never assert on wall-clock time, so only
counts, correctness (every request answered 200, every change seen by every Envoy)
and the presence and type of the figures are checked."""

from __future__ import annotations

import json
import math
import shutil
from typing import Any

import pytest

from bench import convergence_envoys, dataplane_breakdown, dataplane_overhead, idle_cpu

pytestmark = pytest.mark.envoy


def finite(x: Any) -> bool:
    return isinstance(x, float) and math.isfinite(x)


def test_convergence_with_real_envoys() -> None:
    res = convergence_envoys.run(envoys=2, changes=2)
    assert res["envoys"] == 2
    assert [c["kind"] for c in res["changes"]] == ["instance", "policy"]
    for c in res["changes"]:
        assert len(c["per_envoy_s"]) == 2  # every Envoy's ACK found in the ledger
        assert all(finite(x) and x > 0 for x in c["per_envoy_s"])  # ACKed after the commit
        assert c["envoys_show_it"], c["view"]  # the Envoys' own stats show the change
    assert res["all_verified"]
    assert finite(res["all"]["all_p99"]) and finite(res["envoy_rss_mb"]) and res["envoy_rss_mb"] > 0
    text = convergence_envoys.report(res)
    assert "| all changes | 2 |" in text and "2 real Envoy sidecars" in text


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed: apt-get install -y wrk")
def test_dataplane_overhead() -> None:
    res = dataplane_overhead.run(rate=200, seconds=1, rounds=1, connections=4, load_connections=4,
                                 load_seconds=1, warmup=False)
    names = [p["name"] for p in res["paths"]]
    assert names == ["direct", "plain-1", "plain-2", "plain-2-tls", "mesh-2", "edge-2", "edge-2-jwt", "edge-chain"]
    assert res["rows"]["edge-chain"]["plain_hops"] == 1  # its app, a plain Envoy, is not counted as meshgate's
    for name in names:
        row = res["rows"][name]
        # every request through every path answered 200: mTLS, RBAC, the JWT all let it through
        assert row["errors"] == 0 and row["load_errors"] == 0, (name, row)
        assert all(r["requests"] > 0 for r in res["latency"][name] + res["load"][name])
        assert all(finite(row[k]) for k in ("p50", "p90", "p99", "rps", "max_rps"))
        if row["hops"]:
            assert finite(row["added_p99_per_hop"]) and isinstance(row["ratio_p99"], float)
    assert res["verdict"] == "not resolved" and res["target_met"] is False  # one round decides nothing
    lo, hi = res["rows"]["mesh-2"]["ratio_p99_ci"]
    assert lo <= hi  # one round: every resample is that round, so the interval is the point itself
    assert lo == hi == res["rows"]["mesh-2"]["ratio_p99"]
    text = dataplane_overhead.report(res)
    assert "| mesh-2 (" in text and "Target:" in text


HOPS = {"direct": (0, 0), "plain-1": (1, 0), "edge-chain": (5, 1)}  # (hops, of which plain); others (2, 0)


def _rounds(per_hop: dict[str, list[float]]) -> dict[str, list[dict[str, float]]]:
    """Fake wrk figures: `direct` at 100 µs; each path 100 µs + its per-hop added latency for each
    of its own hops + plain-1's for each plain hop it contains."""
    base = {"p50": 100.0, "p90": 100.0, "p99": 100.0, "p999": 100.0, "rps": 1000.0, "errors": 0, "cpu_us": 0.0}
    out: dict[str, list[dict[str, float]]] = {"direct": [dict(base) for _ in range(12)]}
    for name, values in per_hop.items():
        hops, plain = HOPS.get(name, (2, 0))
        total = [v * (hops - plain) + plain * p for v, p in zip(values, per_hop["plain-1"], strict=True)]
        out[name] = [{**base, "p50": 100 + t, "p90": 100 + t, "p99": 100 + t, "cpu_us": t} for t in total]
    return out


def _summary(mesh: list[float]) -> dict[str, Any]:
    from bench._wrk import Target

    steady = [200.0 + (i % 3) for i in range(12)]
    per_hop = {"plain-1": steady, "plain-2": steady, "plain-2-tls": steady, "mesh-2": mesh, "edge-2": mesh,
               "edge-2-jwt": mesh, "edge-chain": mesh}
    lat = _rounds(per_hop)
    paths = [Target(n, HOPS.get(n, (2, 0))[0], "", plain_hops=HOPS.get(n, (2, 0))[1]) for n in lat]
    res = dataplane_overhead.summarize(paths, lat, lat)
    # the chain's plain hop is taken out: per meshgate hop it is the same as mesh-2's
    assert res["rows"]["edge-chain"]["added_p99_per_hop"] == pytest.approx(res["rows"]["mesh-2"]["added_p99_per_hop"])
    assert res["rows"]["edge-chain"]["cpu_us_per_hop"] == pytest.approx(res["rows"]["mesh-2"]["cpu_us_per_hop"])
    return res


def test_overhead_verdict_follows_the_bootstrap_interval() -> None:
    """The p99 verdict: met when the whole 90% interval is at or below 1.10, not met when it is
    entirely above, else not resolved; the interval contains the point estimate."""
    met = _summary([201.0 + (i % 3) for i in range(12)])  # about 1.00x plain-2
    assert met["verdict"] == "met" and met["target_met"]
    lo, hi = met["rows"]["mesh-2"]["ratio_p99_ci"]
    assert lo <= met["rows"]["mesh-2"]["ratio_p99"] <= hi <= 1.10
    slow = _summary([300.0 + (i % 3) for i in range(12)])  # 1.5x
    assert slow["verdict"] == "not met" and not slow["target_met"]
    assert slow["rows"]["mesh-2"]["ratio_p99_ci"][0] > 1.10
    noisy = _summary([150.0 if i % 2 else 300.0 for i in range(12)])  # half the rounds 0.75x, half 1.5x
    assert noisy["verdict"] == "not resolved" and not noisy["target_met"]
    lo, hi = noisy["rows"]["mesh-2"]["ratio_p99_ci"]
    assert lo < 1.10 < hi


def test_bootstrap_ci_is_paired_and_reproducible() -> None:
    from bench._common import bootstrap_ci

    a = [float(i) for i in range(20)]
    b = [2 * x + 1 for x in a]  # b = 2a + 1 in every round: a paired statistic sees no spread
    paired = bootstrap_ci(20, lambda idx: sum(b[i] for i in idx) - 2 * sum(a[i] for i in idx) - len(idx))
    assert paired == (0.0, 0.0)
    mean = bootstrap_ci(20, lambda idx: sum(a[i] for i in idx) / len(idx))
    assert mean[0] < 9.5 < mean[1] and mean == bootstrap_ci(20, lambda idx: sum(a[i] for i in idx) / len(idx))


def test_breakdown_ablations_each_remove_something() -> None:
    """Each variant of the breakdown really lacks its feature in meshgate's translated config
    (a renamed filter would otherwise make a variant silently equal to the full config)."""
    front, backend = dataplane_breakdown.MeshPair().bootstraps(15001, 15006, 8080)
    for name, ablate in dataplane_breakdown.ABLATIONS.items():
        a, b = json.loads(json.dumps(front)), json.loads(json.dumps(backend))
        ablate(a)
        ablate(b)
        assert (a, b) != (front, backend), f"ablation {name!r} removed nothing"
    text = json.dumps(backend)
    assert "meshgate.rbac.allow" in text and "spiffe://bench.local/svc/front" in text  # RBAC on the callee


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed: apt-get install -y wrk")
def test_dataplane_breakdown() -> None:
    res = dataplane_breakdown.run(rounds=1, seconds=1, connections=4, only=["meshgate"],
                                  idle_seconds=0.5, latency_seconds=1)
    assert res["order"] == ["meshgate", "plain Envoys, mTLS"]
    for row in res["rows"].values():
        assert finite(row["cpu_us"]) and row["cpu_us"] > 0 and row["rps"] > 0
        assert finite(row["added_p99_per_hop"]) and finite(row["saved_us"])
    assert "| plain Envoys, mTLS |" in dataplane_breakdown.report(res)


def test_idle_control_plane() -> None:
    res = idle_cpu.run(clients=5, seconds=0.5, settle=0.5)
    assert res["clients"] == 5  # the server counted 5 streams while idle
    assert all(finite(res[k]) and res[k] >= 0 for k in ("cpu_idle_0", "cpu_idle_n", "rss_0_mb", "rss_n_mb"))
    assert finite(res["rss_per_proxy_kb"]) and finite(res["cpu_per_proxy_us_per_s"])
    assert "| 5 |" in idle_cpu.report(res)
