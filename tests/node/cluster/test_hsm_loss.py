"""A member's HSM token goes away under the running node and comes back (real processes,
SoftHSM2, mTLS). SoftHSM2 never serves the old session again, so the member must notice,
stop leading and signing, say so in its health, keep replicating, and restart itself in
place once a fresh process can open the token; then it signs in a quorum that needs it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.node.cluster.harness import QUIET_SCHEDULE, CliFailed, Live, running, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    with running(tmp_path_factory.mktemp("hsmloss") / "c", schedule=QUIET_SCHEDULE) as c:
        yield c


def row(live: Live, node: str) -> dict[str, Any]:
    return next(r.get("status") or {} for r in live.status() if r["name"] == node)


def token_dir(live: Live, node: str) -> Path:
    (tok,) = [p for p in (live.root / node / "hsm" / "tokens").iterdir() if p.is_dir()]
    return tok


def test_a_leader_whose_token_goes_away_steps_down_and_comes_back(live: Live) -> None:
    target = live.leader()
    pid = live.pid(target)
    started = row(live, target)["started_at"]
    tok = token_dir(live, target)
    away = tok.parent.parent / "away"
    os.rename(tok, away)
    try:
        with contextlib.suppress(CliFailed):  # the leader's own vote fails: 503 from it
            live.cli("epoch", "advance", who="ops")  # every member signs a vote with its HSM
        down = wait_for("the member to report its HSM", lambda: (
            (st := row(live, target)) and st.get("hsm", {}).get("ok") is False and st))
        assert down["health"] == "degraded"
        assert down["error"].startswith("hsm: ")
        assert "ObjectHandleInvalid" in down["hsm"]["error"] or "Token" in down["hsm"]["error"]
        # It hands leadership over and keeps replicating; the other two sign (t = 2).
        leader = wait_for("another leader", lambda: (ld := live.leader()) != target and ld)
        sig = live.sign("k1", b"while the token is away")
        live.group_key("k1").verify(sig, b"while the token is away")
        assert live.pid(target) == pid
        applied = row(live, leader)["applied"]
        wait_for("the member to replicate", lambda: row(live, target)["applied"] >= applied)
        assert row(live, target)["started_at"] == started  # no restart while it is away
    finally:
        os.rename(away, tok)
    back = wait_for("the member to restart in place", lambda: (
        (st := row(live, target)) and st.get("started_at", started) != started
        and st.get("health") == "ok" and st))  # fmt: skip
    assert back["hsm"] == {"ok": True, "error": None, "since": None, "last_probe_error": None}
    assert live.pid(target) == pid  # the same process, a new image
    # A quorum that needs the member: the third one is down.
    live.sign_needing(target, "k1", b"signed with the member whose token came back")
    log = (live.root / target / "node.log").read_text()
    assert "the HSM is unusable" in log and "restarting in place" in log
