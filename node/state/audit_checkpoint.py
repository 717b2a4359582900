"""Audit checkpoints: the audit chain's head, signed by the cluster's audit key (FROST).

The bootstrap creates a reserved key, `AUDIT_KEY_ID` (purpose `audit`: it signs audit
checkpoints and nothing else), whose version 1 is made by the members' DKG like any
other version. Every N records the leader coordinates a threshold signature over

    message = SHA-512( lp("custody-cluster/v1/audit-checkpoint") || lp(cluster_id)
                       || u64(seq) || lp(head) || u64(epoch) )

where `head` is the hash of audit record `seq` and `epoch` that record's epoch; each
member signs only a message it recomputed from its own chain. The signed checkpoint
enters the log as `audit_checkpoint` (verified on apply by every replica), and its
audit record carries the signature in its `digest` field, so an export of the chain
holds its own checkpoints.

`verify_audit` is the offline verifier (`custody audit verify`): the hash chain, then
every checkpoint (from the export itself and from a separate checkpoints file) against
the audit group public key, and that the export still holds record `seq` with exactly
that head and epoch (a truncated or altered export fails). Pure: no I/O.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import msgpack
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .audit import decode_records, verify_chain
from .digest import lp, u64
from .ed25519 import is_strict_signature
from .errors import ChainError, DecodeError
from .model import AuditCheckpoint, AuditRecord

AUDIT_KEY_ID = "cluster-audit"
AUDIT_CHECKPOINT_CONTEXT = b"custody-cluster/v1/audit-checkpoint"
AUDIT_CHECKPOINT_KIND = "audit_checkpoint"  # the command kind (and its records' kind)
MAX_AUDIT_CHECKPOINTS = 256  # newest kept in the state (the newest covers all before it)
CHECKPOINTS_FILE_VERSION = 1
MAX_FILE_CHECKPOINTS = 1_000_000
_SHARE_REF = re.compile(r"audit-checkpoint:(0|[1-9][0-9]{0,18})")
_REQUEST_ID = re.compile(r"audit-checkpoint-(0|[1-9][0-9]{0,18})")


def checkpoint_message(cluster_id: str, seq: int, head: bytes, epoch: int) -> bytes:
    """The 64 bytes the audit key signs for the chain at `seq` (see module doc)."""
    body = lp(AUDIT_CHECKPOINT_CONTEXT) + lp(cluster_id) + u64(seq) + lp(head) + u64(epoch)
    return hashlib.sha512(body).digest()


def request_id(seq: int) -> str:
    """The request id of the `audit_checkpoint` command for `seq` (one per seq)."""
    return f"audit-checkpoint-{seq}"


def seq_of_request_id(rid: str) -> int | None:
    m = _REQUEST_ID.fullmatch(rid)
    return int(m.group(1)) if m else None


def share_ref(seq: int) -> str:
    """How a FROST share request names the checkpoint it is for (never a request ref:
    share requests on the audit key are always checkpoints)."""
    return f"audit-checkpoint:{seq}"


def seq_of_share_ref(ref: str) -> int | None:
    m = _SHARE_REF.fullmatch(ref)
    return int(m.group(1)) if m else None


def own_message(cluster_id: str, records: Sequence[AuditRecord], seq: int) -> bytes | None:
    """The checkpoint message for `seq` computed from `records` (a replica's own chain),
    or None if the chain has no record `seq`."""
    if not 0 <= seq < len(records):
        return None
    rec = records[seq]
    return checkpoint_message(cluster_id, seq, rec.hash, rec.epoch)


def signature_valid(group_public_key: bytes, message: bytes, signature: bytes) -> bool:
    """Strict Ed25519 check (canonical R, reduced S) of a FROST signature."""
    if len(signature) != 64 or len(group_public_key) != 32 or not is_strict_signature(signature):
        return False
    try:
        Ed25519PublicKey.from_public_bytes(group_public_key).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


# ------------------------------------------------------------------ export


def checkpoints_in_chain(records: Iterable[AuditRecord]) -> list[AuditCheckpoint]:
    """The checkpoints recorded in a chain: accepted `audit_checkpoint` records by a
    member, whose request id names the seq and whose `digest` holds the signature. Head
    and epoch are taken from record `seq` of the same chain by the verifier."""
    recs = list(records)
    out = []
    for rec in recs:
        if rec.kind != AUDIT_CHECKPOINT_KIND or rec.outcome != "ok":
            continue
        seq = seq_of_request_id(rec.request_id)
        if seq is None or not rec.author.startswith("node-") or seq >= rec.seq:
            continue
        target = recs[seq] if seq < len(recs) and recs[seq].seq == seq else None
        head, epoch = (target.hash, target.epoch) if target else (b"", 0)
        out.append(AuditCheckpoint(seq, head, epoch, rec.version, rec.digest))
    return out


def encode_checkpoints(
    cluster_id: str, checkpoints: Sequence[AuditCheckpoint], keys: dict[int, bytes]
) -> bytes:
    """A checkpoints file: msgpack `{"v": 1, "cluster_id", "keys": {version: group key},
    "checkpoints": [[seq, head, epoch, version, signature], ...]}`."""
    return msgpack.packb(
        {
            "v": CHECKPOINTS_FILE_VERSION,
            "cluster_id": cluster_id,
            "keys": {int(v): bytes(k) for v, k in sorted(keys.items())},
            "checkpoints": [
                [c.seq, c.head, c.epoch, c.version, c.signature]
                for c in sorted(checkpoints, key=lambda c: c.seq)
            ],
        },
        use_bin_type=True,
    )


def decode_checkpoints(data: bytes) -> tuple[str, dict[int, bytes], list[AuditCheckpoint]]:
    """Parse a checkpoints file strictly: (cluster id, keys, checkpoints)."""
    try:
        raw = msgpack.unpackb(
            data, raw=False, strict_map_key=False, max_str_len=1024, max_bin_len=64,
            max_ext_len=0, max_array_len=MAX_FILE_CHECKPOINTS, max_map_len=4096,
        )  # fmt: skip
    except Exception as exc:
        raise DecodeError(f"not a valid checkpoints file: {type(exc).__name__}") from None
    if type(raw) is not dict or set(raw) != {"v", "cluster_id", "keys", "checkpoints"}:
        raise DecodeError("checkpoints file must be a map {v, cluster_id, keys, checkpoints}")
    if raw["v"] != CHECKPOINTS_FILE_VERSION or type(raw["cluster_id"]) is not str:
        raise DecodeError(f"checkpoints file: version {CHECKPOINTS_FILE_VERSION} expected")
    keys = raw["keys"]
    if type(keys) is not dict or any(
        type(v) is not int or type(k) is not bytes or len(k) != 32 for v, k in keys.items()
    ):
        raise DecodeError("checkpoints file: keys must map versions to 32-byte keys")
    out = []
    types = (int, bytes, int, int, bytes)
    if type(raw["checkpoints"]) is not list:
        raise DecodeError("checkpoints file: checkpoints must be a list")
    for i, row in enumerate(raw["checkpoints"]):
        if type(row) is not list or len(row) != 5 or any(
            type(x) is not t for x, t in zip(row, types, strict=True)
        ):
            raise DecodeError(f"checkpoint {i}: expected [seq, head, epoch, version, signature]")
        if not all(0 <= row[j] < 1 << 64 for j in (0, 2, 3)):
            raise DecodeError(f"checkpoint {i}: integer out of range")
        out.append(AuditCheckpoint(*row))
    return raw["cluster_id"], dict(keys), out


# ------------------------------------------------------------------ offline verifier


@dataclass
class CheckpointResult:
    seq: int
    version: int
    source: str  # "export", "file" or "export+file"
    ok: bool
    problem: str = ""


@dataclass
class AuditReport:
    """What `verify_audit` checked. `ok` is False if anything failed."""

    records: int = 0
    head: bytes = b""
    chain_ok: bool = False
    chain_error: str = ""
    checkpoints: list[CheckpointResult] = field(default_factory=list)
    key_source: str = ""  # "pinned" (given by the auditor) or "file" (from the checkpoints file)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def last_checkpointed(self) -> int | None:
        good = [c.seq for c in self.checkpoints if c.ok]
        return max(good) if good else None

    @property
    def uncovered(self) -> int:
        """Records after the last valid checkpoint: no threshold signature covers them."""
        last = self.last_checkpointed
        return self.records if last is None else max(0, self.records - (last + 1))

    @property
    def ok(self) -> bool:
        return self.chain_ok and not self.problems and all(c.ok for c in self.checkpoints)


def verify_audit(
    export: bytes,
    *,
    cluster_id: str,
    public_keys: dict[int, bytes] | None = None,
    pinned: bytes | None = None,
    extra_checkpoints: Sequence[AuditCheckpoint] = (),
) -> AuditReport:
    """Offline check of an audit export and its checkpoints.

    1. the hash chain (`verify_chain`): sequence, links, every record's hash;
    2. every checkpoint found in the export and in `extra_checkpoints` (a checkpoints
       file): the export must hold record `seq` (else the export was truncated after a
       checkpoint), with exactly the checkpoint's head and epoch (else a record at or
       before `seq` was altered or the chain forked), and the signature must verify
       under the audit group key: `pinned` if given (every checkpoint must verify under
       that one key), else `public_keys[version]` (from the checkpoints file).
    """
    report = AuditReport()
    try:
        records = decode_records(export)
    except DecodeError as exc:
        report.chain_error = str(exc)
        report.problems.append(f"export does not decode: {exc}")
        return report
    report.records = len(records)
    try:
        report.head = verify_chain(records)
        report.chain_ok = True
    except ChainError as exc:
        report.chain_error = str(exc)
        report.problems.append(f"hash chain broken: {report.chain_error}")
    report.key_source = "pinned" if pinned is not None else "file"
    keys = public_keys or {}
    found: dict[tuple[int, bytes], str] = {}
    chain_cps = checkpoints_in_chain(records) if report.chain_ok else []
    merged: dict[tuple[int, bytes], AuditCheckpoint] = {}
    for source, cps in (("export", chain_cps), ("file", list(extra_checkpoints))):
        for c in cps:
            k = (c.seq, c.signature)
            found[k] = "export+file" if k in found and found[k] != source else source
            merged.setdefault(k, c)
    for k in sorted(merged):
        c = merged[k]
        res = CheckpointResult(c.seq, c.version, found[k], False)
        report.checkpoints.append(res)
        if c.seq >= len(records):
            res.problem = (
                f"export ends at seq {len(records) - 1}: truncated after this checkpoint"
            )
            continue
        rec = records[c.seq]
        if not hmac.compare_digest(rec.hash, c.head) or rec.epoch != c.epoch:
            res.problem = "the export's record at this seq has another head or epoch"
            continue
        key = pinned if pinned is not None else keys.get(c.version)
        if key is None:
            res.problem = f"no public key for audit key version {c.version}"
            continue
        if not signature_valid(key, checkpoint_message(cluster_id, c.seq, c.head, c.epoch),
                               c.signature):  # fmt: skip
            res.problem = "signature does not verify under the audit group key"
            continue
        res.ok = True
    if not report.checkpoints:
        report.warnings.append("no checkpoint: nothing threshold-signed covers this export")
    return report
