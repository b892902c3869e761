"""Timing helpers shared by the benchmarks: warm up, repeat, take the median."""

import statistics
import time


def median_seconds(fn, repeats):
    """Calls ``fn`` once to warm up (tracing, thread pools), then ``repeats``
    times; the median wall time of one call, in seconds."""
    return interleaved({"run": fn}, repeats)["run"]


def interleaved(runs, repeats):
    """``{name: median seconds}`` of ``{name: fn}``: each warmed up once, then
    ``repeats`` rounds that call every ``fn`` in turn, so that a slow spell of
    a shared machine hits all of them alike."""
    for fn in runs.values():
        fn()
    times = {name: [] for name in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}
