"""How far a long job is: ``done/total <unit> (percent), rate, ETA`` in its log, at most once per interval.

Every job that runs for long (extraction, the linear and MLP probes, the interventions, the attention weights)
counts its work in its own unit with one :class:`Progress`::

    with Progress(log, len(prompts), "texts", what="extraction") as progress:
        for batch in batches:
            ...
            progress.update(len(batch))

which logs ``extraction: 412/6600 texts (6 %), 23.1 texts/s, ETA 4 min 35 s`` at the first update (the job is
working, and at what rate), then at the first update after ``interval`` seconds have passed since its last line, and
a final line when the ``with`` block ends (``extraction: 6600/6600 texts (100 %) in 4 min 46 s, 23.1 texts/s``;
``stopped at`` when it ends with an exception), or at :meth:`Progress.close`. A job's log is ``logs/<rule>/...``:
``tail -f`` it to watch. It decides no number: it only reads a clock.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence


def duration(seconds: float) -> str:
    """``"35 s"``, ``"4 min 35 s"`` or ``"2 h 5 min"``, rounded to the second (to the minute from an hour on)."""
    whole = round(seconds)
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60} s"
    minutes = round(seconds / 60)
    return f"{minutes // 60} h {minutes % 60} min"


def rate(per_second: float, unit: str) -> str:
    """``"23.1 texts/s"``, or per minute or hour where less than one a second (``"2.5 layers/min"``)."""
    for scale, per in ((1, "s"), (60, "min"), (3600, "h")):
        if per_second * scale >= 1 or per == "h":
            return f"{per_second * scale:.1f} {unit}/{per}"


def layer_range(layers: Sequence[int]) -> str:
    """``"1-15 (15 layers)"`` for consecutive layers, else the list (``"1, 3, 5 (3 layers)"``)."""
    layers = list(layers)
    if not layers:
        return "none"
    if layers == list(range(layers[0], layers[-1] + 1)) and len(layers) > 1:
        return f"{layers[0]}-{layers[-1]} ({len(layers)} layers)"
    return f"{', '.join(map(str, layers))} ({len(layers)} layer{'s' * (len(layers) != 1)})"


class Progress:
    """Counts a job's work and logs how far it is (see the module's docstring).

    Parameters
    ----------
    log : the job's logger (:func:`emoprobe.errors.log_to`); None logs nothing.
    total : units of work the job will do.
    unit : their name, plural (``"texts"``, ``"cells"``, ``"runs"``).
    what : what is counted, the start of every line.
    interval : at least this many seconds between two lines before the final one (the first update logs at once).
    clock : seconds, monotonic (:func:`time.monotonic`); a test gives its own.
    """

    def __init__(self, log: logging.Logger | None, total: int, unit: str, *, what: str = "progress",
                 interval: float = 30.0, clock: Callable[[], float] = time.monotonic):
        self.log, self.total, self.unit, self.what = log, int(total), unit, what
        self.interval, self.clock = interval, clock
        self.done = 0
        self.start = clock()
        self.last: float | None = None  # when the last line was logged; None before the first
        self.finished = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        self.close(failed=kind is not None)

    def elapsed(self) -> float:
        return self.clock() - self.start

    def update(self, n: int = 1) -> None:
        """Count ``n`` more units done; log a line if none was logged yet, or ``interval`` seconds have passed
        since the last, unless the count has reached ``total`` (the final line, at :meth:`close`, says so)."""
        self.done += int(n)
        if self.finished or self.done >= self.total:
            return
        now = self.clock()
        if self.last is None or now - self.last >= self.interval:
            self._emit(self.line(now), now)

    def line(self, now: float | None = None) -> str:
        """``what: done/total unit (percent), rate, ETA ...`` at ``now`` (the clock's time by default)."""
        elapsed = (self.clock() if now is None else now) - self.start
        if self.done > 0 and elapsed > 0:
            per_second = self.done / elapsed
            speed, eta = rate(per_second, self.unit), f"ETA {duration(max(self.total - self.done, 0) / per_second)}"
        else:
            speed, eta = f"- {self.unit}/s", "ETA unknown"
        return f"{self.what}: {self._count()}, {speed}, {eta}"

    def close(self, failed: bool = False) -> None:
        """Log the final line (once): the count, the time taken and the mean rate; ``stopped at`` with ``failed``."""
        if self.finished:
            return
        self.finished = True
        now = self.clock()
        elapsed = now - self.start
        if failed:
            message = f"{self.what}: stopped at {self._count()} after {duration(elapsed)}"
        else:
            speed = f", {rate(self.done / elapsed, self.unit)}" if self.done > 0 and elapsed > 0 else ""
            message = f"{self.what}: {self._count()} in {duration(elapsed)}{speed}"
        self._emit(message, now)

    def _count(self) -> str:
        percent = f" ({100 * self.done // self.total} %)" if self.total > 0 else ""
        return f"{self.done}/{self.total} {self.unit}{percent}"

    def _emit(self, message: str, now: float) -> None:
        self.last = now
        if self.log is not None:
            self.log.info("%s", message)
