"""State types of the custody state machine.

Plain dataclasses holding only ints, strings, bytes, bools, enums, tuples and
dicts, so that `snapshot` can encode them canonically. The machine owns the
single mutable `State`; code outside `node.state` should treat it as read-only
and use the query methods of `Machine`. Dicts are always iterated in sorted key
order by the rules, never in insertion order (a restored replica's insertion
order differs from a live one's).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class Role(StrEnum):
    OPERATOR = "operator"
    APPROVER = "approver"
    CLIENT = "client"
    AUDITOR = "auditor"
    NODE = "node"  # a cluster member acting as itself (scheduler, coordinator)


class Purpose(StrEnum):
    SIGN = "sign"
    ENCRYPT = "encrypt"
    # The cluster's own audit key (`audit_checkpoint.AUDIT_KEY_ID`), created by the
    # bootstrap: it signs audit checkpoints and nothing else; no client can use it.
    AUDIT = "audit"


class Op(StrEnum):
    """Operations a key version may be used for."""

    SIGN = "sign"
    VERIFY = "verify"
    ENCRYPT = "encrypt"
    DECRYPT = "decrypt"
    AUDIT = "audit"  # sign an audit checkpoint (the audit key's only use)


class VersionState(StrEnum):
    PENDING = "pending"
    ACTIVE = "active"
    RETIRED = "retired"
    REVOKED = "revoked"
    DESTROYED = "destroyed"


class RequestKind(StrEnum):
    CREATE_KEY = "create_key"
    SIGN = "sign"
    DECRYPT = "decrypt"
    ROTATE = "rotate"
    REVOKE = "revoke"
    ROLLBACK = "rollback"  # make the version the primary replaced the primary again
    DESTROY = "destroy"
    # Governance requests (decided by the governance quorum; named like their command).
    ADD_PRINCIPAL = "add_principal"
    REMOVE_PRINCIPAL = "remove_principal"
    REKEY_PRINCIPAL = "rekey_principal"
    SET_POLICY = "set_policy"
    SET_GOVERNANCE = "set_governance"
    SET_THRESHOLD = "set_threshold"
    ADD_MEMBER = "add_member"
    REMOVE_MEMBER = "remove_member"
    REPAIR_MEMBER = "repair_member"
    SET_OFFICERS = "set_officers"
    RECOVER_MEMBERS = "recover_members"
    EXPORT_KEY = "export_key"  # break-glass: a whole key version to one recipient
    CANCEL = "cancel"
    # A grant: decided by the key's policy quorum like a key request (docs/grants.md).
    GRANT = "grant"


class RequestState(StrEnum):
    PENDING = "pending"  # waiting for approvals
    APPROVED = "approved"  # quorum met; the cluster may execute it
    EXECUTED = "executed"  # result recorded
    FAILED = "failed"  # execution failed or became impossible


class GrantState(StrEnum):
    PENDING = "pending"  # its request waits for the key policy's quorum
    ACTIVE = "active"  # approved; usable until its expiry epoch or its last use
    REVOKED = "revoked"  # revoked by an operator or one approver of its quorum
    FAILED = "failed"  # its request failed before approval (expired, no longer allowed)


@dataclass(slots=True)
class Grant:
    """A capability the key policy's quorum approved in advance: `grantee` may submit
    requests for `operations` on `key_id` whose context matches, signed with its own
    registered Ed25519 key, without further approvals, `max_uses` times, while the
    epoch is below `expires_epoch` (docs/grants.md)."""

    grant_id: str
    grantee: str  # a client principal with a registered Ed25519 key
    key_id: str
    operations: tuple[str, ...]  # as the create_grant command named them (within sign/decrypt)
    context: str
    context_match: str  # "exact" | "prefix"
    max_uses: int
    expires_epoch: int  # usable while epoch < expires_epoch
    request: str  # the `grant` request (`<author>:<id>`) whose quorum decides it
    state: GrantState = GrantState.PENDING
    uses: int = 0  # requests accepted under it (each takes one use, whatever its fate)
    activated_epoch: int = 0
    revoked_epoch: int = 0
    revoked_by: str = ""


@dataclass(slots=True)
class Member:
    """A custody node: its name (`node-<i>`), FROST participant index, identity key."""

    name: str
    index: int
    public_key: bytes


@dataclass(slots=True)
class Principal:
    """A human or service identity; `public_key` (Ed25519, raw) is required for approvers."""

    name: str
    role: Role
    public_key: bytes


@dataclass(slots=True)
class Policy:
    """Who may request what, who approves, and the lifecycle periods of keys under it."""

    policy_id: str
    requesters: tuple[str, ...]  # principals allowed to submit sign/decrypt requests
    operations: tuple[str, ...]  # subset of {"sign", "decrypt"} those requesters may ask for
    approvers: tuple[str, ...]
    k: int  # approvals required (1 <= k <= len(approvers))
    rotation_interval_s: int  # 0 = no time-based rotation (wall clock is policy input only)
    max_uses: int  # 0 = no usage-based rotation
    grace_epochs: int  # epochs a retired version must wait before it may be destroyed
    waiting_epochs: int  # epochs between a DKG completing and its version activating (min 1)
    escrow: bool  # whether break-glass export may ever be requested for keys under it
    # Epochs after a rotation's activation during which a sign request on the primary is
    # also signed by the version it replaced (0 = off; <= grace_epochs; docs/lifecycle.md).
    dual_sign_epochs: int = 0


@dataclass(slots=True)
class Governance:
    """Who decides governance requests, and how long weakening changes wait.

    Set at bootstrap; changed only by a `set_governance` request that this quorum approves.
    """

    approvers: tuple[str, ...] = ()  # registered approvers (sorted)
    k: int = 0  # approvals required (>= 2 unless the cluster was bootstrapped `unsafe`)
    time_lock_epochs: int = 0  # epochs a weakening change waits after its quorum (1..bound)


@dataclass(slots=True)
class Version:
    number: int
    state: VersionState
    request_id: str  # the create-key or rotate request that made it
    group_public_key: bytes = b""
    verification_shares: tuple[bytes, ...] = ()  # ordered by participant index 1..n
    dkg_posts: dict[str, bytes] = field(default_factory=dict)  # member -> digest of its post
    activation_epoch: int = 0  # 0 = not scheduled yet
    activated_at: int = 0  # wall-clock seconds carried by the AdvanceEpoch that activated it
    retired_epoch: int = 0
    revoked_epoch: int = 0
    destroyed_epoch: int = 0
    uses: int = 0
    # The version that was the primary when this one activated (0 = none): the one a
    # rollback may restore and the one that dual-signs (docs/lifecycle.md).
    replaced: int = 0
    # A rollback made this (retired) version the primary again at this epoch (0 = never);
    # `rollback_uses` is its `uses` then: a usage-based rotation counts from the rollback.
    rolled_back_epoch: int = 0
    rollback_uses: int = 0
    # Destroyed versions: the members that confirmed (`record_erasure`) they crypto-erased
    # their share objects of this version, sorted by name. Empty for any other state.
    erased_by: tuple[str, ...] = ()
    # The share generation members use (in the slot's AAD): a committed proactive refresh
    # moves it forward together with `verification_shares` (docs/recovery.md).
    generation: int = 0


@dataclass(slots=True)
class Key:
    key_id: str
    purpose: Purpose
    policy_id: str
    versions: dict[int, Version] = field(default_factory=dict)
    primary: int = 0  # the active version used for new operations; 0 = none
    lifecycle_request: str = ""  # open create-key/rotate/rollback request ("" = none)
    # Metadata (docs/metadata.md): labels with no authority, set by an operator at once.
    owner: str = ""
    description: str = ""
    tags: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class Alias:
    """A name bound to one key for ever (docs/metadata.md): deleting it keeps the name
    reserved for that key (`deleted_epoch` > 0), so it can never point elsewhere."""

    name: str
    key_id: str
    created_epoch: int
    deleted_epoch: int = 0  # 0 = live


@dataclass(slots=True)
class Request:
    request_id: str
    kind: RequestKind
    author: str
    key_id: str
    purpose: str  # the key's purpose ("" for requests about no key)
    policy_id: str  # the policy whose quorum decides it
    policy_hash: bytes  # SHA-512 of that policy's content at submission (digest input)
    version: int  # 0 until known (create/rotate: set when the version is created)
    context: str
    payload_hash: bytes  # SHA-512 of message / ciphertext; payload itself is not kept
    digest: bytes  # canonical request digest approvers sign
    submitted_epoch: int
    approvers: tuple[str, ...]  # copied from the policy at submission
    k: int
    activate_epoch: int = 0  # create/rotate: earliest activation epoch named by the request
    # Governance request approved as weakening: it takes effect on entering this epoch,
    # unless the governance quorum cancels it first (0 = not time-locked).
    effective_epoch: int = 0
    state: RequestState = RequestState.PENDING
    approvals: dict[str, bytes] = field(default_factory=dict)  # approver -> signature
    payload: bytes = b""  # kept while the request may still execute (governance: the change)
    result: bytes = b""  # sign: the verified signature; decrypt: the t-th confirmation
    confirmations: dict[str, bytes] = field(default_factory=dict)  # decrypt: member -> digest
    reports: dict[str, str] = field(default_factory=dict)  # member -> failure it reported
    # create/rotate, while approved: member -> its DKG round-1 package (cleared when decided)
    dkg_round1: dict[str, bytes] = field(default_factory=dict)
    failure: str = ""
    decided_epoch: int = 0
    # Grants. A `grant` request: the grant it decides. A sign/decrypt request made under a
    # grant: that grant, which use of it this was (1..max_uses), the version as the grantee
    # named it (0 = primary) and the grantee's signature over its command, so that every
    # replica (and a restored one) can re-check it in `executable()`.
    grant: str = ""
    grant_use: int = 0
    grant_version: int = 0
    grant_signature: bytes = b""
    # A sign request on the primary inside its policy's dual-sign window: the version the
    # primary replaced, which signs the same message too (0 = none; a digest input).
    dual_version: int = 0

    @property
    def ref(self) -> str:
        """How the state and commands name this request: `<author>:<request id>`."""
        return f"{self.author}:{self.request_id}"


@dataclass(frozen=True, slots=True)
class Outcome:
    """The result of applying one command (what the proposer gets back)."""

    request_id: str
    ok: bool
    code: str  # a RequestState / "ok" when accepted, a Reason value when rejected
    detail: str = ""
    seq: int = -1  # audit sequence number of the record this command produced


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One link of the audit chain. Never holds key material, shares, nonces or plaintext."""

    seq: int
    epoch: int
    author: str
    kind: str  # command kind
    request_id: str  # the command's own request id
    subject: str  # the request it concerns (approve/record) or the same id
    key_id: str
    version: int
    digest: bytes  # canonical request digest, or the command digest
    outcome: str  # "ok"/request state, or "rejected:<reason>"
    prev: bytes  # hash of the previous record (zeros for the first)
    hash: bytes


@dataclass(frozen=True, slots=True)
class Dedup:
    """First outcome of a request id plus the command digest that produced it."""

    command_digest: bytes
    outcome: Outcome


@dataclass(frozen=True, slots=True)
class EpochVote:
    """One member's vote to move the epoch to `epoch`, with its wall-clock reading `at`."""

    epoch: int
    at: int


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A member's signature over the state hash of the snapshot at log `index`
    (`checkpoint.checkpoint_message`): what certifies a snapshot to other members."""

    index: int
    state_hash: bytes  # snapshot.state_hash(runner snapshot bytes, index), 64 bytes
    signature: bytes  # Ed25519 by the member's identity key


@dataclass(frozen=True, slots=True)
class AuditCheckpoint:
    """A threshold (FROST) signature by the audit key over the audit chain at `seq`
    (`audit_checkpoint.checkpoint_message`): `head` is the hash of record `seq` and
    `epoch` that record's epoch."""

    seq: int
    head: bytes  # 64 bytes
    epoch: int
    version: int  # the audit key version that signed
    signature: bytes  # 64-byte Ed25519 signature by that version's group key


@dataclass(frozen=True, slots=True)
class Address:
    """Where a member listens ("host:port"): the replicated address book, so that every
    member learns a new or moved member's address from the log (docs/recovery.md)."""

    raft: str
    api: str


class RepairState(StrEnum):
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class VersionRef:
    key_id: str
    version: int


@dataclass(slots=True)
class Repair:
    """A member's shares of every key version being rebuilt by t helpers
    (`shares.repair`, docs/recovery.md). Decided by a governance `repair_member` request;
    run in batches of at most `batch` versions, one *run* at a time. Each run's posts go
    through the log (first post per party counts); the target confirms a run with
    `record_repair` once its slot holds every share of the batch, each checked against
    the published verification share. A run that fails (a culprit named, a party lost
    its session, a timeout) is replaced by a new run; named culprits help no more."""

    member: str
    request: str  # the repair_member request (`<author>:<id>`)
    started_epoch: int
    items: tuple[VersionRef, ...]  # every version to rebuild, (key id, version) order
    batch: int  # versions per run (bounded so that a helper's post fits in a command)
    done: int = 0  # items[:done] are rebuilt and confirmed
    run: int = 1  # the current run's number (posts name it; stale ones are refused)
    helpers: tuple[str, ...] = ()  # the current run's helper set (t members)
    excluded: tuple[str, ...] = ()  # members named as culprits: they help no more
    posts: dict[str, bytes] = field(default_factory=dict)  # current run: member -> post
    failed_runs: int = 0
    state: RepairState = RepairState.RUNNING
    failure: str = ""
    finished_epoch: int = 0

    def batch_items(self) -> tuple[VersionRef, ...]:
        return self.items[self.done : self.done + self.batch]


@dataclass(slots=True)
class Refresh:
    """A proactive refresh of every usable key version's shares among all members
    (`shares.refresh`, docs/recovery.md), in batches, one run at a time. Each member
    stores its next generation beside the current one and records the new verification
    shares it derived; when every participant recorded the same values, the batch
    commits: each version's verification shares and generation move forward at once."""

    request: str  # `<author>:<id>` of the start_refresh command
    started_epoch: int
    participants: tuple[str, ...]  # every member when it started (sorted by index)
    items: tuple[VersionRef, ...]
    batch: int
    done: int = 0
    run: int = 1
    posts: dict[str, bytes] = field(default_factory=dict)  # current run: member -> post
    # current run: the new verification shares per item (as first recorded) and who
    # recorded the same values
    proposed: tuple[tuple[bytes, ...], ...] = ()
    recorded: tuple[str, ...] = ()
    failed_runs: int = 0
    state: RepairState = RepairState.RUNNING
    failure: str = ""
    finished_epoch: int = 0

    def batch_items(self) -> tuple[VersionRef, ...]:
        return self.items[self.done : self.done + self.batch]


@dataclass(frozen=True, slots=True)
class Officer:
    """A recovery officer (docs/recovery.md): a person with their own keys, never a
    principal of the API. X25519 receives escrow pieces; Ed25519 signs approvals and
    releases, which an operator submits for them."""

    name: str
    x25519: bytes
    ed25519: bytes


@dataclass(frozen=True, slots=True)
class Officers:
    """The officer set and its quorum `k` (empty: no escrow, no recovery)."""

    officers: tuple[Officer, ...] = ()  # sorted by name; officer o holds escrow piece o
    k: int = 0
    digest: bytes = b""  # `recovery.officers_digest`: escrow packages name the set they used


@dataclass(frozen=True, slots=True)
class Escrow:
    """One member's share of one version, split k-of-m among the officers and sealed to
    each (`node.protocols.escrow`); opaque to the machine."""

    member: str
    key_id: str
    version: int
    generation: int  # the share generation escrowed (a refresh makes it stale)
    officers: bytes  # the officer-set digest it was made for
    package: bytes
    epoch: int


@dataclass(slots=True)
class Recovery:
    """A lost cluster rebuilt by the officers (docs/recovery.md): `recover_members`
    registered fresh nodes' identity keys; officers re-seal their escrow pieces of each
    member's shares to that member's fresh node (`releases`), which combines them, checks
    them against the verification shares, stores them and confirms (`recovered`)."""

    request: str  # the recover_members request (`<author>:<id>`)
    started_epoch: int
    officers: Officers  # the set whose pieces are released (as when it started)
    keys: dict[str, bytes] = field(default_factory=dict)  # member -> fresh node's X25519 key
    items: dict[str, tuple[VersionRef, ...]] = field(default_factory=dict)  # member -> escrowed
    usable: tuple[VersionRef, ...] = ()  # every usable version when it started
    # "<member>/<officer>/<key id>/<version>" -> an officer's re-sealed piece
    releases: dict[str, bytes] = field(default_factory=dict)
    recovered: tuple[str, ...] = ()  # members whose node stored and confirmed every share
    repaired: tuple[str, ...] = ()  # members rebuilt by a repair from recovered ones instead
    finished_epoch: int = 0


@dataclass(slots=True)
class Export:
    """A break-glass export (docs/recovery.md): members seal their shares of one version
    to the requester's X25519 key; the requester's tool combines t of them, outside the
    cluster."""

    request: str  # the export_key request (`<author>:<id>`)
    key_id: str
    version: int
    recipient: bytes  # the requester's X25519 public key
    epoch: int
    pieces: dict[str, bytes] = field(default_factory=dict)  # member -> its sealed share


@dataclass(slots=True)
class State:
    cluster_id: str = ""
    genesis: bytes = b""  # genesis_digest of the bootstrap command
    unsafe: bool = False  # bootstrap waived the two-party minimums (loud in the audit)
    threshold: int = 0
    epoch: int = 0
    members: dict[str, Member] = field(default_factory=dict)
    principals: dict[str, Principal] = field(default_factory=dict)
    governance: Governance = field(default_factory=Governance)
    # Removed identities: kept so that their names, indices and keys are never reused and
    # the requests they wrote or approved still resolve; they can do and approve nothing.
    removed_members: dict[str, Member] = field(default_factory=dict)
    removed_principals: dict[str, Principal] = field(default_factory=dict)
    policies: dict[str, Policy] = field(default_factory=dict)
    keys: dict[str, Key] = field(default_factory=dict)
    grants: dict[str, Grant] = field(default_factory=dict)
    aliases: dict[str, Alias] = field(default_factory=dict)  # name -> alias (live or deleted)
    requests: dict[str, Request] = field(default_factory=dict)
    open: dict[str, str] = field(default_factory=dict)  # open request id -> author (an index)
    # Executed decrypt requests that still take late partials (a member that did not
    # confirm yet may still give one, so that one bad partial does not force a new
    # request): ref -> the last epoch it does. Their payload is kept until then.
    lingering: dict[str, int] = field(default_factory=dict)
    outcomes: dict[str, Dedup] = field(default_factory=dict)
    epoch_votes: dict[str, EpochVote] = field(default_factory=dict)  # member -> vote for epoch+1
    # member -> its newest checkpoints (ascending index, at most MAX_CHECKPOINTS each)
    checkpoints: dict[str, tuple[Checkpoint, ...]] = field(default_factory=dict)
    # Audit checkpoints (threshold-signed chain heads): the newest MAX_AUDIT_CHECKPOINTS,
    # ascending seq, and how many were ever accepted.
    audit_checkpoints: tuple[AuditCheckpoint, ...] = ()
    audit_checkpoint_count: int = 0
    audit: list[AuditRecord] = field(default_factory=list)
    # Share repairs (docs/recovery.md): the latest one per member, running or finished.
    repairs: dict[str, Repair] = field(default_factory=dict)
    # The address book: members added or moved through the log (the founding members'
    # addresses are in every node's configuration).
    addresses: dict[str, Address] = field(default_factory=dict)
    # Proactive refreshes: the latest one only (by its request ref), running or finished.
    refreshes: dict[str, Refresh] = field(default_factory=dict)
    # Recovery officers and escrow (docs/recovery.md): the officer set, the members'
    # escrow packages ("<member>/<key id>/<version>" -> the newest), officers' approvals of
    # open recover_members requests (request ref -> officer -> signature), and the latest
    # recovery of a lost cluster (at most one entry, by its request ref).
    officers: Officers = field(default_factory=Officers)
    escrows: dict[str, Escrow] = field(default_factory=dict)
    officer_approvals: dict[str, dict[str, bytes]] = field(default_factory=dict)
    recoveries: dict[str, Recovery] = field(default_factory=dict)
    exports: dict[str, Export] = field(default_factory=dict)  # break-glass, by request ref

    @property
    def bootstrapped(self) -> bool:
        return bool(self.cluster_id)
