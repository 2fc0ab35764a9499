"""Timing shared by the benchmarks: warm up, then the median over `repeat` rounds of the mean
time of back-to-back calls."""
from __future__ import annotations

import statistics
import time


def timed(fn, repeat: int = 3, inner: int | None = None, budget: float = 0.1, warmup: int = 1) -> float:
    """Seconds per call of fn(). `inner` calls per round, or as many as fill about `budget`
    seconds (measured on one call after the warm-up)."""
    for _ in range(warmup):
        fn()
    if inner is None:
        t0 = time.perf_counter()
        fn()
        inner = max(1, int(budget / max(time.perf_counter() - t0, 1e-7)))
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        ts.append((time.perf_counter() - t0) / inner)
    return statistics.median(ts)
