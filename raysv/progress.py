"""Throttled progress logging for long loops (imports, synthesis, scoring)."""

from __future__ import annotations

import logging
import time


class Progress:
    """Log ``done/total`` with a rate at most every ``every_s`` seconds, and at the end.

    Usage: ``p = Progress("probing audio", total); p.update(n); p.close()``.
    ``total`` may be None when unknown (a folder walk).
    """

    def __init__(
        self,
        what: str,
        total: int | None = None,
        every_s: float = 2.0,
        logger: logging.Logger | None = None,
    ):
        self.what, self.total, self.every_s = what, total, every_s
        self.log = logger or logging.getLogger("raysv")
        self.done = 0
        self.t0 = self._last = time.monotonic()

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if now - self._last >= self.every_s:
            self._last = now
            self._emit(now)

    def _emit(self, now: float) -> None:
        rate = self.done / max(now - self.t0, 1e-9)
        if self.total:
            eta = (self.total - self.done) / rate if rate > 0 else float("inf")
            self.log.info(
                "%s: %d/%d (%.0f/s, ~%.0fs left)", self.what, self.done, self.total, rate, eta
            )
        else:
            self.log.info("%s: %d (%.0f/s)", self.what, self.done, rate)

    def close(self) -> float:
        """Log the final count; return elapsed seconds."""
        now = time.monotonic()
        elapsed = now - self.t0
        if elapsed >= self.every_s:
            self._emit(now)
        return elapsed
