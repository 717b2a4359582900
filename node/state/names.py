"""Names of members and principals: exactly the PKI's naming rule (docs/pki.md).

A principal's name in the state and the name in its certificate's identity URI
must map one to one, so the state accepts exactly the names `node.pki.names`
accepts (`tests/node/state/test_names.py` checks the two rules agree): members
are `node-<i>` (i = 1..15, no leading zero, and i is the member's index),
principals `[a-z][a-z0-9_-]{0,31}` and never `node-...`. The rule is restated
here rather than imported so that the pure state machine does not load the PKI
package (file and certificate handling) on every replica.

A request is referred to as `<author>:<request id>`: request ids are scoped by
their author (a name never contains ':'), so nobody can take another's id.
"""

from __future__ import annotations

import re

MAX_MEMBER_INDEX = 15
_PRINCIPAL_RE = re.compile(r"[a-z][a-z0-9_-]{0,31}")
_MEMBER_RE = re.compile(r"node-([1-9][0-9]?)")


def member_index(name: str) -> int:
    """The index of member `name` (`node-<i>`), or 0 if it is not a member name."""
    m = _MEMBER_RE.fullmatch(name) if type(name) is str else None
    if m is None or int(m.group(1)) > MAX_MEMBER_INDEX:
        return 0
    return int(m.group(1))


def is_member_name(name: str) -> bool:
    return member_index(name) > 0


def is_principal_name(name: str) -> bool:
    return (
        type(name) is str
        and _PRINCIPAL_RE.fullmatch(name) is not None
        and not name.startswith("node-")
    )


def is_author_name(name: str) -> bool:
    return is_member_name(name) or is_principal_name(name)


def ref(author: str, request_id: str) -> str:
    """How a request is named in the state and by commands: `<author>:<request id>`."""
    return f"{author}:{request_id}"
