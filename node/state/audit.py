"""The audit hash chain and its offline verifier.

Each record's hash is SHA-512 over a domain-separated, length-prefixed encoding
of all its fields, including the previous record's hash:

    hash = SHA-512( lp(AUDIT_CONTEXT) || u64(seq) || u64(epoch) || lp(author) || lp(kind)
                    || lp(request_id) || lp(subject) || lp(key_id) || u64(version)
                    || lp(digest) || lp(outcome) || lp(prev) )

The first record has `prev = GENESIS` (64 zero bytes). A verifier needs only the
records (and, to detect a truncated tail, the expected head hash, e.g. from a
threshold-signed checkpoint).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Sequence

import msgpack

from .digest import lp, u64
from .errors import ChainError, DecodeError
from .model import AuditRecord

AUDIT_CONTEXT = b"custody-cluster/v1/audit-record"
GENESIS = bytes(64)
MAX_EXPORT_RECORDS = 1_000_000
_FIELDS = (
    "seq", "epoch", "author", "kind", "request_id", "subject",
    "key_id", "version", "digest", "outcome", "prev", "hash",
)  # fmt: skip


def record_hash(
    *,
    seq: int,
    epoch: int,
    author: str,
    kind: str,
    request_id: str,
    subject: str,
    key_id: str,
    version: int,
    digest: bytes,
    outcome: str,
    prev: bytes,
) -> bytes:
    body = b"".join(
        (
            lp(AUDIT_CONTEXT),
            u64(seq),
            u64(epoch),
            lp(author),
            lp(kind),
            lp(request_id),
            lp(subject),
            lp(key_id),
            u64(version),
            lp(digest),
            lp(outcome),
            lp(prev),
        )
    )
    return hashlib.sha512(body).digest()


def make_record(prev_record: AuditRecord | None, **fields: object) -> AuditRecord:
    """Build the next record after `prev_record` (None for the first)."""
    seq = 0 if prev_record is None else prev_record.seq + 1
    prev = GENESIS if prev_record is None else prev_record.hash
    h = record_hash(seq=seq, prev=prev, **fields)  # type: ignore[arg-type]
    return AuditRecord(seq=seq, prev=prev, hash=h, **fields)  # type: ignore[arg-type]


def verify_chain(
    records: Iterable[AuditRecord],
    expected_head: bytes | None = None,
    *,
    start_seq: int = 0,
    start_prev: bytes = GENESIS,
) -> bytes:
    """Check a chain and return its head hash; raise `ChainError` at the first bad record.

    Detects altered records (hash mismatch), removed, inserted or reordered records
    (sequence or link mismatch) and, given `expected_head`, a truncated tail.
    `start_seq`/`start_prev` verify a segment that begins after a checkpoint.
    """
    head, seq = start_prev, start_seq
    for rec in records:
        if rec.seq != seq:
            raise ChainError(f"expected sequence {seq}, found {rec.seq}", rec.seq)
        if not hmac.compare_digest(rec.prev, head):
            raise ChainError("previous-hash link broken", rec.seq)
        fields = {f: getattr(rec, f) for f in _FIELDS if f not in ("seq", "prev", "hash")}
        want = record_hash(seq=rec.seq, prev=rec.prev, **fields)
        if not hmac.compare_digest(rec.hash, want):
            raise ChainError("record hash does not match its contents", rec.seq)
        head, seq = rec.hash, seq + 1
    if expected_head is not None and not hmac.compare_digest(head, expected_head):
        raise ChainError("chain head differs from the expected head (truncated or forked)")
    return head


def encode_records(records: Sequence[AuditRecord]) -> bytes:
    """Export records for offline verification (msgpack list of fixed-order arrays)."""
    return msgpack.packb([[getattr(r, f) for f in _FIELDS] for r in records], use_bin_type=True)


def decode_records(data: bytes, max_records: int = MAX_EXPORT_RECORDS) -> list[AuditRecord]:
    """Parse an export strictly (types and bounds); the chain itself is checked by verify."""
    try:
        raw = msgpack.unpackb(
            data, raw=False, max_array_len=max(max_records, len(_FIELDS)), max_map_len=0,
            max_str_len=1024, max_bin_len=64, max_ext_len=0,
        )  # fmt: skip
    except Exception as exc:
        raise DecodeError(f"not a valid audit export: {type(exc).__name__}") from None
    if type(raw) is not list:
        raise DecodeError("audit export must be a list")
    out = []
    types = (int, int, str, str, str, str, str, int, bytes, str, bytes, bytes)
    for i, row in enumerate(raw):
        if type(row) is not list or len(row) != len(_FIELDS):
            raise DecodeError(f"record {i}: expected {len(_FIELDS)} fields")
        for name, typ, value in zip(_FIELDS, types, row, strict=True):
            if type(value) is not typ or (typ is int and not 0 <= value < 1 << 64):
                raise DecodeError(f"record {i}: bad {name}")
        out.append(AuditRecord(**dict(zip(_FIELDS, row, strict=True))))
    return out


def verify_export(data: bytes, expected_head: bytes | None = None) -> bytes:
    """Offline check of an exported chain (`encode_records` bytes); returns the head hash."""
    return verify_chain(decode_records(data), expected_head)
