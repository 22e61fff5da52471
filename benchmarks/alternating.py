"""Contenders timed in one process, taking turns round after round."""

from __future__ import annotations

import statistics
import time
from typing import Callable, Hashable


def median_call_seconds(calls: dict[Hashable, Callable[[], object]], rounds: int, min_time: float
                        ) -> dict[Hashable, float]:
    """The median seconds per call of each contender in ``calls`` (each a function that runs one
    call to its end). A measurement is as many back-to-back calls as last ``min_time`` seconds;
    every round measures every contender once, the order rotating from round to round, so that the
    machine's drift hits them alike."""
    keys = list(calls)
    times = {k: [] for k in keys}
    for r in range(rounds):
        for k in keys[r % len(keys):] + keys[: r % len(keys)]:
            count, start = 0, time.perf_counter()
            while time.perf_counter() - start < min_time:
                calls[k]()
                count += 1
            times[k].append((time.perf_counter() - start) / count)
    return {k: statistics.median(v) for k, v in times.items()}
