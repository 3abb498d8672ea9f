"""How the book measures: latency samples and their summaries (chapters 15, 17, 18, 20, the benchmark) and the
memory of this process (chapter 16, the benchmark).

A library, not a runner: ``bench`` (``make bench``), ``service.bench``, ``onnx_export``, ``bnb`` and the chapters
import from here, so each figure is computed one way. Timings are in seconds; summaries in milliseconds.
"""

import os
import resource
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np


def latency_samples(run: Callable[[], object], warmup: int = 3, repeats: int = 20,
                    clock: Callable[[], float] = time.perf_counter) -> list[float]:
    """Seconds taken by each of ``repeats`` calls of ``run()``, after ``warmup`` calls that are not timed.

    The first calls of a model pay for one-off work (allocating buffers, packing weights, starting threads); timing
    them would measure that, not the steady state a server sees.
    """
    for _ in range(warmup):
        run()
    samples = []
    for _ in range(repeats):
        start = clock()
        run()
        samples.append(clock() - start)
    return samples


def latency_summary(samples: list[float], digits: int | None = None) -> dict[str, float]:
    """Median and 95th percentile (linear interpolation, as ``numpy.percentile``) of timings in seconds, in
    milliseconds (rounded to ``digits`` when given): the book's one summary of latencies (chapters 15, 17, 18, 20)."""
    values = np.asarray(samples, dtype=np.float64) * 1000
    median, p95 = float(np.median(values)), float(np.percentile(values, 95))
    if digits is not None:
        median, p95 = round(median, digits), round(p95, digits)
    return {"median_ms": median, "p95_ms": p95}


def interleaved_samples(runs: dict, warmup: int = 3, repeats: int = 20,
                        clock: Callable[[], float] = time.perf_counter) -> dict[str, list[float]]:
    """Seconds of each call of each ``runs[name]()``, taken in turns: ``warmup`` untimed rounds, then
    ``repeats`` rounds that call every run once. A burst of load from elsewhere then hits every run alike,
    which timing one run after the other (``latency_samples``) cannot promise."""
    for _ in range(warmup):
        for run in runs.values():
            run()
    samples = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = clock()
            run()
            samples[name].append(clock() - start)
    return samples


def spread_ms(samples: list[float]) -> str:
    """``"5.12 ms (middle half 5.01-5.30, 40 calls)"``: the median and the quartiles of timings in seconds."""
    low, middle, high = np.percentile(np.asarray(samples) * 1000, [25, 50, 75])
    return f"{middle:.2f} ms (middle half {low:.2f}-{high:.2f}, {len(samples)} calls)"


def rss_mib() -> float:
    """Resident set size of this process now, in MiB (Linux ``/proc``; 0 where unavailable)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0.0
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def reset_peak_rss() -> bool:
    """Start the peak-memory count afresh (Linux: writing 5 to ``/proc/self/clear_refs`` resets ``VmHWM``).

    Without it the peak would include what the imports and the data loading used before the model was loaded.
    """
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mib() -> float:
    """Peak resident set size of this process since the last reset (``VmHWM``), in MiB; ``ru_maxrss`` (peak since
    the start) where ``/proc`` does not tell."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
