"""Timing helpers shared by the benchmarks.

Ratios are what the benchmarks report, so the candidates of one comparison
are timed *interleaved* (A, B, A, B, ...) and each gets the median of its
runs: a burst of load from elsewhere on the machine then hits both alike.
"""

import statistics
import time


def median_seconds(fn, repeat=10, warmup=2):
    """Median wall time of ``fn()`` over ``repeat`` runs, after ``warmup`` runs."""
    return interleaved({"fn": fn}, repeat, warmup)["fn"]


def interleaved(fns, repeat=10, warmup=2):
    """``{name: median seconds}`` for a dict of callables timed round by round."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def table(header, rows):
    """A Markdown table as a string."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
