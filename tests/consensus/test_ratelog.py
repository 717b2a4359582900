"""Rate-limited logging, driven by an injected clock: deterministic, no sleeps."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

import pytest

from consensus.ratelog import RateLimitFilter, install, limit_logger, template_of, uninstall


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Lines(logging.Handler):
    """Collects formatted messages."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def tree() -> Iterator[tuple[logging.Logger, Lines]]:
    """A private logger tree ("rltest") with one collecting handler at its top."""
    top = logging.getLogger("rltest")
    sink = Lines()
    top.addHandler(sink)
    top.setLevel(logging.DEBUG)
    top.propagate = False
    yield top, sink
    top.removeHandler(sink)
    for name in ("rltest", "rltest.a", "rltest.b", "rltest.a.deep", "rltestx"):
        lg = logging.getLogger(name)
        lg.filters.clear()
    top.propagate = True


def test_a_burst_passes_then_one_summary_per_window(tree, clock):
    top, sink = tree
    f = RateLimitFilter(burst=3, interval=10.0, clock=clock)
    sink.addFilter(f)
    for i in range(100):
        top.warning("peer %d sent junk", i)
    assert sink.lines == ["peer 0 sent junk", "peer 1 sent junk", "peer 2 sent junk"]
    clock.now += 9.9
    top.warning("peer %d sent junk", 100)
    assert len(sink.lines) == 3  # still the same window
    clock.now += 0.1
    top.warning("peer %d sent junk", 101)
    assert sink.lines[3:] == [
        "suppressed 98 similar messages (more than 3 in 10 s): peer %d sent junk",
        "peer 101 sent junk",
    ]
    assert f.stats == {"passed": 4, "suppressed": 98, "summaries": 1}


def test_templates_are_limited_separately_and_numbers_do_not_split_them(tree, clock):
    top, sink = tree
    sink.addFilter(RateLimitFilter(burst=2, interval=60.0, clock=clock))
    for i in range(5):
        top.error("accept failed on fd %d", i)
        top.error(f"socket.accept() out of system resource\nsocket: <fd={i} at 0x7f{i:04x}>")
        logging.getLogger("rltest.a").error("accept failed on fd %d", i)  # another logger
    assert sink.lines == [
        "accept failed on fd 0",
        "socket.accept() out of system resource\nsocket: <fd=0 at 0x7f0000>",
        "accept failed on fd 0",
        "accept failed on fd 1",
        "socket.accept() out of system resource\nsocket: <fd=1 at 0x7f0001>",
        "accept failed on fd 1",
    ]


def test_template_key_is_first_line_with_numbers_replaced():
    rec = logging.LogRecord("x", logging.INFO, "", 0, "conn 12 from 0xdeadbeef\nmore 3", (), None)
    assert template_of(rec) == "conn # from #"
    rec.msg = ValueError("boom")  # non-string messages are keyed by their type
    assert template_of(rec) == "ValueError"


def test_only_the_named_loggers_and_their_children_are_limited(tree, clock):
    _, sink = tree
    sink.addFilter(RateLimitFilter(burst=1, interval=60.0, prefixes=("rltest.a",), clock=clock))
    for _ in range(3):
        logging.getLogger("rltest.a").info("same")
        logging.getLogger("rltest.a.deep").info("same")
        logging.getLogger("rltest.b").info("same")  # not in scope
    assert sink.lines.count("same") == 2 + 3


def test_a_record_is_judged_once_across_several_handlers(tree, clock):
    top, sink = tree
    second = Lines()
    top.addHandler(second)
    f = RateLimitFilter(burst=2, interval=60.0, clock=clock)
    top.addFilter(f)  # on the logger and on both handlers
    sink.addFilter(f)
    second.addFilter(f)
    try:
        for _ in range(5):
            top.warning("x")
        assert sink.lines == second.lines == ["x", "x"]
        assert f.stats["passed"] == 2
        assert f.stats["suppressed"] == 3
        clock.now += 60
        top.warning("x")
        assert sink.lines == second.lines
        assert sink.lines[2:] == ["suppressed 3 similar messages (more than 2 in 60 s): x", "x"]
    finally:
        top.removeHandler(second)


def test_flush_writes_pending_summaries(tree, clock):
    top, sink = tree
    f = RateLimitFilter(burst=1, interval=60.0, clock=clock)
    sink.addFilter(f)
    for _ in range(4):
        top.warning("a")
        top.error("b %s", "z")
    assert f.flush() == 2
    assert sorted(sink.lines[2:]) == [
        "suppressed 3 similar messages (more than 1 in 60 s): a",
        "suppressed 3 similar messages (more than 1 in 60 s): b %s",
    ]
    assert f.flush() == 0
    top.warning("a")  # still the first window: suppressed, counted for a later summary
    assert len(sink.lines) == 4


def test_summary_keeps_the_highest_suppressed_level(tree, clock):
    top, sink = tree
    levels: list[int] = []
    sink.addFilter(RateLimitFilter(burst=1, interval=1.0, clock=clock))
    sink.emit = lambda r: levels.append(r.levelno)  # type: ignore[method-assign]
    top.info("m")
    top.info("m")
    top.error("m")
    clock.now += 1
    top.info("m")
    assert levels == [logging.INFO, logging.ERROR, logging.INFO]


def test_key_table_and_total_lines_are_bounded(tree, clock):
    top, sink = tree
    f = RateLimitFilter(burst=5, interval=60.0, max_keys=10, max_per_interval=20, clock=clock)
    sink.addFilter(f)
    for i in range(1000):  # messages that differ in text, not only in numbers
        top.warning("unique message " + "".join(chr(97 + int(c)) for c in str(i)))
    assert len(sink.lines) == 20
    assert len(f._windows) == 10
    assert f.stats["evicted"] == 990
    clock.now += 60
    top.warning("after")
    assert sink.lines[-1] == "after"


def test_install_limits_children_propagating_to_root_handlers(clock):
    root = logging.getLogger()
    sink = Lines()
    root.addHandler(sink)
    f = install(("rltestx",), burst=2, interval=60.0, clock=clock)
    try:
        assert sink in f.attached
        assert logging.getLogger("rltestx") in f.attached
        child = logging.getLogger("rltestx.transport")  # its records only reach handlers
        child.setLevel(logging.INFO)
        for i in range(10):
            child.warning("dropped a frame from node %d", i)
            logging.getLogger("rltest-other").warning("unrelated %d", i)
        mine = [x for x in sink.lines if x.startswith("dropped")]
        assert mine == ["dropped a frame from node 0", "dropped a frame from node 1"]
        assert len([x for x in sink.lines if x.startswith("unrelated")]) == 10
    finally:
        uninstall(f)
        root.removeHandler(sink)
        logging.getLogger("rltestx.transport").setLevel(logging.NOTSET)
    assert f.attached == []
    assert f not in sink.filters


def test_asyncio_exception_handler_floods_are_limited(clock):
    """asyncio logs "socket.accept() out of system resource" through its
    exception handler, pre-formatted with the socket; one line per failed accept."""
    sink = Lines()
    aio = logging.getLogger("asyncio")
    aio.addHandler(sink)
    f = install(("asyncio",), burst=3, interval=60.0, clock=clock)
    loop = asyncio.new_event_loop()
    try:
        for fd in range(500):
            loop.call_exception_handler(
                {
                    "message": "socket.accept() out of system resource",
                    "exception": OSError(24, "Too many open files"),
                    "socket": f"<socket fd={fd}, laddr=('127.0.0.1', {40000 + fd})>",
                }
            )
        assert len(sink.lines) == 3
        assert f.stats["suppressed"] == 497
        assert f.flush() == 1
        assert sink.lines[-1].startswith("suppressed 497 similar messages")
    finally:
        loop.close()
        uninstall(f)
        aio.removeHandler(sink)


def test_limit_logger_bounds_one_logger(tree, clock):
    _, sink = tree
    f = limit_logger("rltest.b", burst=1, interval=5.0, clock=clock)
    for _ in range(3):
        logging.getLogger("rltest.b").warning("w")
    assert sink.lines == ["w"]
    uninstall(f)
    logging.getLogger("rltest.b").warning("w")
    assert sink.lines == ["w", "w"]


def test_bad_parameters_are_refused():
    with pytest.raises(ValueError):
        RateLimitFilter(burst=0)
    with pytest.raises(ValueError):
        RateLimitFilter(interval=0)
