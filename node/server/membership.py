"""Membership from the replicated state (docs/recovery.md): the address book and Raft.

Governance decides who is a member (`add_member`, `remove_member`, a replacing
`repair_member`); this duty makes the running cluster follow, on every member:

- the address book: a member added or moved through the log is given to the Raft
  transport (`Driver.add_peer`) and used for API calls between members; a member
  removed from Raft is dropped from the transport;
- on the leader, one Raft membership change at a time: a new member joins as a
  learner, becomes a voter once it has caught up (the core refuses earlier), and
  a removed member leaves Raft (the core's rules keep a two-to-one shrink safe,
  docs/consensus.md).

A node removed from the cluster says so once and does nothing more (its operator
stops it).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from consensus.driver import NotLeader, ProposalDropped
from consensus.messages import ConfChange, ConfChangeType
from node.server.config import parse_address

if TYPE_CHECKING:
    from node.server.runtime import Runtime

log = logging.getLogger("custody.membership")

RETRY_S = 1.0


class MembershipDuty:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self._last_change = 0.0
        self._told_removed = False

    async def reconcile(self) -> None:
        rt = self.rt
        st = rt.machine.state
        if not st.bootstrapped or rt.driver is None:
            return
        self._sync_transport()
        if rt.name in st.removed_members and not self._told_removed:
            log.warning("%s was removed from the cluster: stop this node", rt.name)
            self._told_removed = True
        if rt.is_leader() and time.monotonic() - self._last_change >= RETRY_S:
            await self._change_one()

    def _sync_transport(self) -> None:
        rt = self.rt
        assert rt.driver is not None
        st = rt.machine.state
        known = rt.driver.transport.peers()
        for name in sorted(st.addresses):
            member = st.members.get(name)
            if member is None or member.index == rt.index:
                continue
            addr = parse_address(st.addresses[name].raft)
            if known.get(member.index) != addr:
                rt.driver.add_peer(member.index, addr)
                log.info("%s is at %s (address book)", name, st.addresses[name].raft)
        conf = rt.driver.core.conf_state()
        for name, m in sorted(st.removed_members.items()):
            gone = m.index not in conf.voters and m.index not in conf.learners
            if gone and m.index in known and m.index != rt.index:
                rt.driver.remove_peer(m.index)
                log.info("%s left: no longer a Raft peer", name)

    async def _change_one(self) -> None:
        rt = self.rt
        assert rt.driver is not None
        st = rt.machine.state
        conf = rt.driver.core.conf_state()
        in_raft = set(conf.voters) | set(conf.learners)
        members = {m.index: m.name for m in st.members.values()}
        reachable = set(rt.driver.transport.peers()) | {rt.index}
        change = None
        for idx in sorted(set(members) - in_raft):
            if idx in reachable:
                change, why = ConfChange(ConfChangeType.ADD_LEARNER, idx), "joins as a learner"
                break
        if change is None:
            for idx in sorted(set(conf.learners) & set(members)):
                change, why = ConfChange(ConfChangeType.ADD_VOTER, idx), "caught up: a voter"
                break
        if change is None:
            removed = {m.index for m in st.removed_members.values()}
            for idx in sorted(in_raft & removed):
                change, why = ConfChange(ConfChangeType.REMOVE_NODE, idx), "leaves Raft"
                break
        if change is None:
            return
        self._last_change = time.monotonic()
        try:
            await rt.driver.change_membership(change, timeout=5.0)
        except (ProposalDropped, NotLeader, TimeoutError) as exc:
            # e.g. a learner that has not caught up yet: the core refuses; try again later
            log.debug("membership change %s not made now: %s", change, exc.__class__.__name__)
            return
        log.info("node-%d %s", change.node_id, why)
