"""`meshgate serve` raises Python's gen0 collection threshold (meshgate.xds.runner.tune_gc):
translation allocates many short-lived objects, and the default threshold made the collector
a fifth of a full translate (docs/benchmarks.md, Translation)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from meshgate.xds.runner import GC_GEN0_THRESHOLD, tune_gc


@pytest.fixture
def thresholds() -> Iterator[None]:
    saved = gc.get_threshold()
    try:
        yield
    finally:
        gc.set_threshold(*saved)


def test_tune_gc_raises_gen0_and_keeps_the_older_generations(thresholds: None) -> None:
    gc.set_threshold(700, 11, 12)
    tune_gc()
    assert gc.get_threshold() == (GC_GEN0_THRESHOLD, 11, 12)


def test_tune_gc_never_lowers_a_higher_setting(thresholds: None) -> None:
    gc.set_threshold(GC_GEN0_THRESHOLD * 3, 10, 10)
    tune_gc()
    assert gc.get_threshold() == (GC_GEN0_THRESHOLD * 3, 10, 10)
