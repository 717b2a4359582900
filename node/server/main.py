"""`custody node run`: one custody node process, until SIGTERM/SIGINT or a fail-stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys

from aiohttp import web

from consensus import ratelog
from consensus.gate import raise_nofile_limit
from consensus.tls import server_context
from node.server.app import create_app
from node.server.config import NodeConfig
from node.server.runtime import Runtime

log = logging.getLogger("custody.node")

RESTART = -1  # `serve` asks `run` to restart the node in place (node.server.hsm_watch)


async def serve(cfg: NodeConfig) -> int:
    """Run the node; exit status 0 after SIGTERM/SIGINT, 1 if it could not start or
    fail-stopped (storage failure), so that a supervisor restarts it."""
    rt = Runtime(cfg)
    try:
        await rt.start()
    except Exception as exc:
        log.error("cannot start: %s: %s", exc.__class__.__name__, exc)
        with contextlib.suppress(Exception):
            await rt.stop()
        return 1
    runner = web.AppRunner(create_app(rt), access_log=None, handle_signals=False)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    code = 0
    try:
        ctx = server_context(cfg.tls_ca, cfg.tls_cert, cfg.tls_key)
        site = web.TCPSite(runner, cfg.api_listen[0], cfg.api_listen[1], ssl_context=ctx)
        await site.start()
        log.info("api listening on https://%s:%d", *cfg.api_listen)
        assert rt.driver is not None
        failed = asyncio.ensure_future(rt.driver.wait_failed())
        stopped = asyncio.ensure_future(stop.wait())
        restart = asyncio.ensure_future(rt.hsm.restart.wait())
        await asyncio.wait({failed, stopped, restart}, return_when=asyncio.FIRST_COMPLETED)
        for t in (failed, stopped, restart):
            t.cancel()
        if rt.driver.failure is not None:
            log.error("fail-stop: %s", rt.driver.failure)
            code = 1
        elif rt.hsm.restart.is_set() and not stop.is_set():
            code = RESTART
        else:
            log.info("stopping on signal")
    finally:
        await runner.cleanup()
        await rt.stop()
    return code


def run(cfg: NodeConfig) -> int:
    from node.server import logs

    logs.setup(cfg.name, cfg.log_level, cfg.log_format)
    ratelog.install()
    raise_nofile_limit()
    code = asyncio.run(serve(cfg))
    if code != RESTART:
        return code
    # The same command line in a new process image (same pid, same environment): the
    # PKCS#11 module is initialised afresh. Python's own descriptors are close-on-exec.
    log.warning("restarting in place: %s", " ".join(sys.orig_argv))
    logging.shutdown()
    os.execv(sys.executable, sys.orig_argv)  # noqa: S606 (our own argv, no shell)
