"""Key metadata (owner, description, tags) and aliases: bounds, names, hashing.

Metadata and aliases carry no authority (docs/metadata.md): they grant nothing and
change no protection, so an operator sets them at once (signed, audited). What they
must never do is mislead: approvers see and sign request digests that name the real
key id and never depend on metadata, and an alias, once bound to a key, stays bound to
that key for ever (deleting it keeps its name reserved for that key), so nobody can
silently redirect an application's requests to another key.

Text is printable ASCII (`commands._TEXT_RE`): `str.isprintable()` follows the
interpreter's Unicode tables, so replicas on two Python versions could disagree.
"""

from __future__ import annotations

import hashlib
import re

import msgpack

MAX_OWNER_CHARS = 128
MAX_DESCRIPTION_CHARS = 1024
MAX_TAGS = 32
MAX_TAG_VALUE_CHARS = 256
TAG_KEY_RE = re.compile(r"[a-z0-9][a-z0-9_.:/-]{0,62}")
# Alias names: lower case, a namespace shared with key ids (an alias never equals a key id,
# and a key id never equals an alias name, bound or deleted: the machine refuses both).
ALIAS_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
# Alias names ever bound (live or deleted: a deleted name stays reserved for its key).
MAX_ALIASES = 4096
METADATA_CONTEXT = b"custody-cluster/v1/key-metadata"
ALIAS_CONTEXT = b"custody-cluster/v1/alias"


def is_alias_name(name: object) -> bool:
    return type(name) is str and ALIAS_RE.fullmatch(name) is not None


def metadata_hash(owner: str, description: str, tags: dict[str, str]) -> bytes:
    """SHA-512 of a key's metadata, canonically encoded (tags sorted by key): what the
    audit record of a `set_key_metadata` carries instead of the text itself."""
    body = msgpack.packb(
        [METADATA_CONTEXT, owner, description, [[k, tags[k]] for k in sorted(tags)]],
        use_bin_type=True,
    )
    return hashlib.sha512(body).digest()


def alias_hash(name: str) -> bytes:
    """SHA-512 of an alias name: the digest of a `create_alias`/`delete_alias` audit
    record (with its key id), so that an auditor can check which alias changed."""
    return hashlib.sha512(msgpack.packb([ALIAS_CONTEXT, name], use_bin_type=True)).digest()
