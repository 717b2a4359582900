"""One line per event, as text or JSON lines; nothing secret ever goes in.

Callers log names, request references, indexes and reasons only: never shares,
nonces, PINs, messages, plaintexts or private keys. `setup` is called once by
`custody node run`.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}  # fmt: skip


def _where(exc_info: Any) -> str:
    """Exception class, message (ours never hold secrets) and innermost frame: enough
    to find a bug, one line, no locals."""
    etype, value, tb = exc_info
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    frame = f" at {tb.tb_frame.f_code.co_filename.rsplit('/', 1)[-1]}:{tb.tb_lineno}" if tb else ""
    return f"{etype.__name__}: {str(value)[:200]}{frame}"


class JsonLines(logging.Formatter):
    """`{"ts", "level", "logger", "node", "msg"}` per line (plus `exc` for errors)."""

    def __init__(self, node: str) -> None:
        super().__init__()
        self.node = node

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "node": self.node,
            "msg": record.getMessage(),
        }
        if record.exc_info and record.exc_info[0] is not None:
            out["exc"] = _where(record.exc_info)
        return json.dumps(out, separators=(",", ":"))


class TextLines(logging.Formatter):
    """`2026-12-02T10:00:00Z node-1 info custody.dkg: message` (exception class, no trace)."""

    def __init__(self, node: str) -> None:
        super().__init__()
        self.node = node

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        line = f"{ts}Z {self.node} {record.levelname.lower()} {record.name}: {record.getMessage()}"
        if record.exc_info and record.exc_info[0] is not None:
            line += f" [{_where(record.exc_info)}]"
        return line.replace("\n", " ")


def setup(node: str, level: str = "info", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLines(node) if fmt == "json" else TextLines(node))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(_LEVELS.get(level, logging.INFO))
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
