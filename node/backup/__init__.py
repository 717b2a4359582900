"""Backup bundles of one custody node: its Raft snapshot and its share objects, exported
by the slot under a fresh backup key that is split k-of-m among recovery officers.

- `formats`   byte/JSON formats, bounds, domains and the key schedule
- `officers`  officers' X25519 (escrow) and Ed25519 (signing) key files
- `snapshot`  read the newest snapshot from a data directory; install one back
- `bundle`    create, inspect (integrity), unlock (k officers), open (authenticity)
- `release`   offline officer releases to a one-time restore key
- `node_ops`  create from / restore into a node (config, token, data directory)

The CLI is `custody backup ...` (node/cli/backup.py); docs/backup.md describes the
bundle, the threat model and the restore runbook.
"""
