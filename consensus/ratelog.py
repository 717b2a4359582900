"""Rate-limited logging, so that no remote peer can make a node write an
unbounded number of log lines (DESIGN.md §2.8: every input is bounded, and a
log line is an output a peer can cause).

A review made a node write 22,423 "Too many open files" lines in 40 s: each
refused or failed connection logged once. `RateLimitFilter` lets through a
burst of `burst` records per (logger name, message template) per `interval`
seconds, drops the rest, and writes one "suppressed K similar messages"
summary when that template next logs after its window (or on `flush()`).

Templates are keyed after replacing digits and hex numbers with `#` and
keeping the first line, because some libraries (asyncio's exception handler)
log pre-formatted messages that differ only in socket numbers, addresses or
ids. The key table is bounded (`max_keys`, least recently used evicted), and
`max_per_interval` optionally caps all scoped records together, so even
messages that vary in their text cannot add lines without bound.

A logger's filters only see records created on that very logger, not those
propagated from its children, so `install()` attaches the filter to the
handlers (where every record ends up) as well as to the named loggers; it
limits only records from the named loggers and their children. A record is
judged once even when several handlers carry the filter.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable

_NUMBERS = re.compile(r"0x[0-9a-fA-F]+|\d+")
_SUMMARY_MARK = "_ratelog_summary"  # set on summary records: every filter lets them through
_MAX_TEMPLATE = 200


class _Window:
    __slots__ = ("count", "level", "start", "suppressed", "template")

    def __init__(self, start: float, template: str, level: int) -> None:
        self.start = start
        self.count = 0
        self.suppressed = 0
        self.template = template
        self.level = level


def template_of(record: logging.LogRecord) -> str:
    """The key part of a record: its unformatted message's first line, numbers
    replaced, so that pre-formatted variants of one message share a key."""
    msg = record.msg if isinstance(record.msg, str) else type(record.msg).__name__
    return _NUMBERS.sub("#", msg.split("\n", 1)[0][:_MAX_TEMPLATE])


class RateLimitFilter(logging.Filter):
    """Allow `burst` records per (logger, template) per `interval` seconds.

    `prefixes` are the logger names (with their children) it limits; records
    from other loggers pass untouched ("" limits everything). `clock` is
    injectable for tests. Counters are in `stats`.
    """

    def __init__(
        self,
        burst: int = 10,
        interval: float = 60.0,
        *,
        prefixes: Iterable[str] = ("",),
        max_keys: int = 1024,
        max_per_interval: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        if burst < 1 or interval <= 0 or max_keys < 1:
            raise ValueError("burst, interval and max_keys must be positive")
        self.burst = burst
        self.interval = interval
        self.max_keys = max_keys
        self.max_per_interval = max_per_interval
        self._clock = clock
        self._prefixes = tuple(prefixes)
        self._windows: OrderedDict[tuple[str, str], _Window] = OrderedDict()
        self._all_start = float("-inf")  # the window of max_per_interval
        self._all_count = 0
        self._verdict = f"_ratelog_{id(self)}"  # a record's verdict, for further handlers
        self._lock = threading.RLock()  # records may come from several threads
        self.attached: list[logging.Filterer] = []  # where install() put this filter
        self.stats: Counter[str] = Counter()

    def _in_scope(self, name: str) -> bool:
        return any(p == "" or name == p or name.startswith(p + ".") for p in self._prefixes)

    def filter(self, record: logging.LogRecord) -> bool:
        seen = record.__dict__.get(self._verdict)
        if seen is not None:
            return bool(seen)
        if record.__dict__.get(_SUMMARY_MARK) or not self._in_scope(record.name):
            return True
        with self._lock:
            ok = self._judge(record)
        record.__dict__[self._verdict] = ok
        return ok

    def _judge(self, record: logging.LogRecord) -> bool:
        now = self._clock()
        key = (record.name, template_of(record))
        w = self._windows.get(key)
        if w is None or now - w.start >= self.interval:
            if w is not None and w.suppressed:
                self._summarize(record.name, w)
            w = _Window(now, key[1], record.levelno)
            self._windows[key] = w
            if len(self._windows) > self.max_keys:
                _, old = self._windows.popitem(last=False)
                self.stats["evicted"] += 1
                self.stats["evicted_suppressed"] += old.suppressed
        self._windows.move_to_end(key)
        if now - self._all_start >= self.interval:
            self._all_start, self._all_count = now, 0
        ok = w.count < self.burst and (
            self.max_per_interval is None or self._all_count < self.max_per_interval
        )
        if ok:
            w.count += 1
            self._all_count += 1
            self.stats["passed"] += 1
        else:
            w.suppressed += 1
            w.level = max(w.level, record.levelno)
            self.stats["suppressed"] += 1
        return ok

    def _summarize(self, name: str, w: _Window) -> None:
        summary = logging.LogRecord(
            name,
            w.level,
            __file__,
            0,
            "suppressed %d similar messages (more than %d in %g s): %s",
            (w.suppressed, self.burst, self.interval, w.template),
            None,
        )
        summary.__dict__[_SUMMARY_MARK] = True
        w.suppressed = 0
        self.stats["summaries"] += 1
        logging.getLogger(name).handle(summary)

    def flush(self) -> int:
        """Write the summaries still pending (at shutdown, or periodically);
        returns how many were written."""
        with self._lock:
            pending = [(name, w) for (name, _), w in self._windows.items() if w.suppressed]
            for name, w in pending:
                self._summarize(name, w)
        return len(pending)


def limit_logger(
    logger: logging.Logger | str,
    burst: int = 10,
    interval: float = 60.0,
    *,
    clock: Callable[[], float] = time.monotonic,
) -> RateLimitFilter:
    """Bound the records created on one logger (not its children), whatever
    the process configures: for modules that log about remote input."""
    lg = logging.getLogger(logger) if isinstance(logger, str) else logger
    f = RateLimitFilter(burst, interval, prefixes=(lg.name,), clock=clock)
    lg.addFilter(f)
    f.attached.append(lg)
    return f


def install(
    loggers: Iterable[str] = ("consensus", "asyncio", "aiohttp"),
    *,
    burst: int = 10,
    interval: float = 60.0,
    max_per_interval: int | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> RateLimitFilter:
    """Rate-limit `loggers` and their children in this process. Call once,
    after logging is configured: the filter goes on the handlers present now
    (root's, the named loggers', and `logging.lastResort`) and on the named
    loggers. Returns the filter (for `flush()`, `stats` and `uninstall`)."""
    names = tuple(loggers)
    f = RateLimitFilter(
        burst, interval, prefixes=names, max_per_interval=max_per_interval, clock=clock
    )
    targets: list[logging.Filterer] = []
    for lg in [logging.getLogger(), *(logging.getLogger(n) for n in names)]:
        if lg is not logging.getLogger():
            targets.append(lg)
        targets.extend(lg.handlers)
    if logging.lastResort is not None:
        targets.append(logging.lastResort)
    for t in targets:
        if t not in f.attached:
            t.addFilter(f)
            f.attached.append(t)
    return f


def uninstall(f: RateLimitFilter) -> None:
    """Detach a filter from everywhere `install()` or `limit_logger()` put it."""
    for t in f.attached:
        t.removeFilter(f)
    f.attached.clear()
