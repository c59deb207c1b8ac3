"""The xDS scale benchmark at smoke size: it runs end to end and its figures make sense
(counts, not timings: tests never assert on wall-clock time)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _bench():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("bench_xds_scale", ROOT / "bench" / "xds_scale.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_xds_scale"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_translate_part_at_smoke_size() -> None:
    t = _bench().translate_bench(30, 2)
    assert t["proxies"] == 30 and t["instances"] == 60
    assert t["one_change_rebuilt_services"] == 1  # one instance added: one service re-serialized
    assert t["one_change_proxies"] == 3  # its three callers (each service is called by the next three)
    assert t["distinct_resources"] > 30 * 4


def test_fleet_part_at_smoke_size(tmp_path: Path) -> None:
    bench = _bench()
    f = bench.fleet_bench(10)
    assert f["clients"] == 10 and f["streams"] == 10
    assert len(f["everyone"]) == 10  # every client ACKed the change to `common`
    assert f["callers_n"] == len(f["callers"]) > 0
    text = bench.report(bench.translate_bench(10, 1), f)
    assert text.startswith(bench.SECTION) and "10 delta clients" in text
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\n## Other\n\nkeep me\n")
    bench.write_section(text, doc)
    bench.write_section(text, doc)  # replaces its own section, keeps the others
    body = doc.read_text()
    assert body.count(bench.SECTION) == 1 and body.count(bench.SECTION_FLEET) == 1 and "keep me" in body
