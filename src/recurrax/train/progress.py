"""Progress output for long work: a bar on interactive terminals, plain periodic lines otherwise."""

from __future__ import annotations

import sys
import time
from typing import TextIO


def format_duration(seconds: float) -> str:
    """``75`` → ``'1m15s'``; ``4000`` → ``'1h06m'``."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"


class Progress:
    """Reports ``step/total``, the latest values (e.g. loss), steps per second and the ETA.

    On a TTY the line is redrawn in place (at most ~10 times a second); elsewhere (logs, CI) one
    plain line is printed every ``every`` steps. ``enabled=False`` prints nothing.
    """

    def __init__(self, total: int, *, start: int = 0, every: int = 100, stream: TextIO | None = None,
                 enabled: bool = True, label: str = "step"):
        self.total, self.start, self.every, self.label = total, start, max(1, every), label
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.interactive = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self._t0 = time.perf_counter()
        self._last_draw = 0.0

    def rate(self, step: int) -> float:
        elapsed = time.perf_counter() - self._t0
        return (step - self.start) / elapsed if elapsed > 0 else 0.0

    def line(self, step: int, values: dict[str, float]) -> str:
        rate = self.rate(step)
        eta = (self.total - step) / rate if rate > 0 else float("nan")
        shown = " ".join(f"{k} {v:.4g}" for k, v in values.items())
        eta_text = format_duration(eta) if eta == eta else "?"
        return f"{self.label} {step}/{self.total} {shown} {rate:.1f} {self.label}s/s ETA {eta_text}"

    def update(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        if self.interactive:
            now = time.perf_counter()
            if now - self._last_draw < 0.1 and step < self.total:
                return
            self._last_draw = now
            width = 24
            filled = int(width * step / max(1, self.total))
            bar = "█" * filled + "·" * (width - filled)
            self.stream.write(f"\r[{bar}] {self.line(step, values)}\033[K")
            self.stream.flush()
        elif step % self.every == 0 or step == self.total:
            print(self.line(step, values), file=self.stream, flush=True)

    def message(self, text: str) -> None:
        """Print a line of its own (an evaluation, say) without breaking the bar."""
        if not self.enabled:
            return
        prefix = "\r\033[K" if self.interactive else ""
        print(prefix + text, file=self.stream, flush=True)

    def close(self) -> None:
        if self.enabled and self.interactive:
            self.stream.write("\n")
            self.stream.flush()
