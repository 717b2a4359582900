"""``custody cluster init | up | down | status | logs``: a whole local cluster in one directory.

Why: a cluster needs a PKI, one HSM token per node, a signed bootstrap command
whose genesis every node agrees on, one config per node and one profile per
principal; getting any of them inconsistent by hand is easy. ``init`` makes all
of it in one directory (see docs/config.md for the layout), ``up``/``down``
start and stop the node processes (pid files, health checks over mTLS),
``status``/``logs`` look at them. Top-level imports stay light: this module is
imported on every ``custody`` invocation.
"""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path
from typing import Any

CLUSTER_FILE = "cluster.json"
NODE_CMD_ENV = "CUSTODY_NODE_CMD"  # test hook: replaces "python -m node.cli node run"
PID_FILE = "node.pid"
LOG_FILE = "node.log"
CONFIG_FILE = "node.toml"
DEFAULT_CLUSTER_ID = "local"
DEFAULT_TIME_LOCK = 2
DEFAULT_UP_TIMEOUT = 60.0
DEFAULT_DOWN_TIMEOUT = 10.0
LOG_TAIL_ON_FAILURE = 20
MAX_RESPONSE_BYTES = 64 * 1024
MAX_CLUSTER_FILE_BYTES = 1 << 20
API_PORT_OFFSET = 100
ANY_HOST = "0.0.0.0"  # noqa: S104 - with --hosts a node listens on all of its own host's interfaces


class ClusterError(ValueError):
    """Bad arguments or an unusable cluster directory (printed as one line, exit 2)."""


def _names(value: str) -> list[str]:
    """A comma-separated list of names; empty items are an error, not silently dropped."""
    items = value.split(",")
    if any(not item for item in items):
        raise argparse.ArgumentTypeError(f"empty name in {value!r}")
    return items


def _flatten(lists: list[list[str]] | None) -> list[str]:
    return [x for sub in lists or [] for x in sub]


# ---------------------------------------------------------------- argument parsing


def register(subparsers: argparse._SubParsersAction) -> None:
    cluster = subparsers.add_parser(
        "cluster",
        help="create, start, stop and inspect a local cluster in one directory",
        description="A whole cluster (PKI, HSM tokens, bootstrap, node configs, client "
        "profiles) in one directory, and its node processes. See docs/config.md.",
    )
    sub = cluster.add_subparsers(dest="cluster_command", metavar="ACTION", required=True)

    init = sub.add_parser(
        "init",
        help="create PKI, tokens, signed bootstrap, node configs and profiles in DIR",
        description="Create a complete cluster directory. Every argument is checked before "
        "anything is written; a failure part-way removes what was written.",
    )
    init.add_argument("--dir", required=True, type=Path, help="cluster directory")
    init.add_argument("--nodes", type=int, default=3, help="number of nodes, 1..15 (default 3)")
    init.add_argument(
        "--threshold",
        type=int,
        help="members needed to sign or decrypt, 1..nodes (default: 2, or 1 for one node)",
    )
    for role, text in (
        ("approvers", "approvers (governance and request approvals)"),
        ("clients", "clients (submit sign/decrypt requests)"),
        ("operators", "operators (the first one authors the bootstrap); at least one"),
        ("auditors", "auditors (read-only)"),
    ):
        init.add_argument(
            f"--{role}",
            type=_names,
            action="append",
            metavar="NAME[,NAME...]",
            help=text,
        )
    init.add_argument(
        "--cluster-id",
        default=DEFAULT_CLUSTER_ID,
        help=f"cluster id, [A-Za-z0-9][A-Za-z0-9._-]{{0,63}} (default {DEFAULT_CLUSTER_ID!r})",
    )
    init.add_argument(
        "--base-port",
        type=int,
        default=0,
        help="raft port P+i and API port P+100+i for node-i (default 0: free loopback ports)",
    )
    init.add_argument(
        "--hosts",
        type=_names,
        metavar="HOST[,HOST...]",
        help="one host name per node, node-1's first, for nodes on separate hosts or "
        "containers: node-i listens on 0.0.0.0, its peers and the profiles dial HOST_i, and "
        "its certificate names HOST_i besides 127.0.0.1 and localhost; needs --base-port",
    )
    init.add_argument(
        "--governance-k",
        type=int,
        help="approvers needed for a governance change (default: min(2, approvers))",
    )
    init.add_argument(
        "--time-lock-epochs",
        type=int,
        default=DEFAULT_TIME_LOCK,
        help=f"epochs a weakening governance change waits, 1..4096 (default {DEFAULT_TIME_LOCK})",
    )
    init.add_argument(
        "--epoch-interval",
        type=float,
        default=0.0,
        help="seconds between automatic epoch votes; 0 = epochs advance only on "
        "`epoch advance` (default 0)",
    )
    init.add_argument(
        "--unsafe",
        action="store_true",
        help="allow threshold 1 with several nodes, or governance by a single approver "
        "(recorded in the bootstrap)",
    )
    init.add_argument(
        "--force",
        action="store_true",
        help="replace an existing cluster directory (only one that has cluster.json)",
    )
    init.add_argument("--json", action="store_true", help="print the result as JSON")
    init.set_defaults(func=cmd_init)

    up = sub.add_parser(
        "up",
        help="start the nodes that are not running and wait until the cluster is healthy",
        description="Start every node of DIR that is not already running (detached, output "
        f"appended to node-<i>/{LOG_FILE}, pid in node-<i>/{PID_FILE}), then wait until every "
        "node reports healthy and one is leader. The node command can be replaced for tests "
        f"with ${NODE_CMD_ENV} (words split like a shell; --config FILE is appended).",
    )
    up.add_argument("--dir", required=True, type=Path, help="cluster directory")
    up.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_UP_TIMEOUT,
        help=f"seconds to wait for a healthy cluster (default {DEFAULT_UP_TIMEOUT:g})",
    )
    up.set_defaults(func=cmd_up)

    down = sub.add_parser(
        "down",
        help="stop the running nodes (SIGTERM, then SIGKILL)",
        description="Send SIGTERM to every node whose pid file names a live process started "
        "with that node's config (a reused pid is never signalled), wait, then SIGKILL.",
    )
    down.add_argument("--dir", required=True, type=Path, help="cluster directory")
    down.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_DOWN_TIMEOUT,
        help=f"seconds to wait after SIGTERM before SIGKILL (default {DEFAULT_DOWN_TIMEOUT:g})",
    )
    down.set_defaults(func=cmd_down)

    status = sub.add_parser(
        "status",
        help="show each node's process and Raft/health status",
        description="Per node: its process, and what GET /v1/sys/status answers (role, term, "
        "commit, applied, epoch, leader, health). Exit 1 if a node is unreachable.",
    )
    status.add_argument("--dir", required=True, type=Path, help="cluster directory")
    status.add_argument("--json", action="store_true", help="print a JSON list")
    status.set_defaults(func=cmd_status)

    logs = sub.add_parser("logs", help="print the tail of the node logs")
    logs.add_argument("--dir", required=True, type=Path, help="cluster directory")
    logs.add_argument("--node", help="only this node (node-<i>)")
    logs.add_argument(
        "-n", "--lines", type=int, default=50, help="lines per node, 1..100000 (default 50)"
    )
    logs.set_defaults(func=cmd_logs)
    from node.cli._cluster_add import register_add_node

    register_add_node(sub)


# ---------------------------------------------------------------- the cluster file


class _Node:
    """One node of cluster.json."""

    def __init__(self, root: Path, name: str, index: int, raft: str, api: str) -> None:
        from node.server.config import parse_address

        self.name, self.index = name, index
        self.raft, self.api = parse_address(raft), parse_address(api)
        self.dir = root / name
        self.config = self.dir / CONFIG_FILE
        self.pid_file = self.dir / PID_FILE
        self.log = self.dir / LOG_FILE


class _Cluster:
    """What ``cluster.json`` says, with the directory's paths."""

    def __init__(self, root: Path, doc: dict[str, Any]) -> None:
        self.root = root
        self.cluster_id: str = doc["cluster_id"]
        self.threshold: int = doc["threshold"]
        self.nodes = [_Node(root, n["name"], n["index"], n["raft"], n["api"]) for n in doc["nodes"]]
        self.principals: list[tuple[str, str]] = [(p["name"], p["role"]) for p in doc["principals"]]

    @property
    def operator(self) -> str:
        """The first operator: the bootstrap's author, whose profile ``up``/``status`` use."""
        return next(name for name, role in self.principals if role == "operator")

    def node(self, name: str) -> _Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise ClusterError(f"{name!r} is not a node of {self.root} ({self._node_names()})")

    def _node_names(self) -> str:
        return ", ".join(n.name for n in self.nodes)


def _load_cluster(root: Path) -> _Cluster:
    import json

    root = root.resolve()
    path = root / CLUSTER_FILE
    try:
        with path.open("rb") as fh:
            data = fh.read(MAX_CLUSTER_FILE_BYTES + 1)
    except FileNotFoundError:
        raise ClusterError(
            f"{root} is not a cluster directory (no {CLUSTER_FILE}); create one with "
            "`custody cluster init`"
        ) from None
    try:
        doc = json.loads(data)
        if len(data) > MAX_CLUSTER_FILE_BYTES or not isinstance(doc, dict) or doc.get("v") != 1:
            raise ValueError("not a version 1 cluster file")
        cluster = _Cluster(root, doc)
        if [n.index for n in cluster.nodes] != list(range(1, len(cluster.nodes) + 1)) or any(
            n.name != f"node-{n.index}" for n in cluster.nodes
        ):
            raise ValueError("nodes must be node-1 .. node-N in order")
        cluster.operator  # noqa: B018 - must exist
    except (ValueError, KeyError, TypeError, StopIteration) as exc:
        raise ClusterError(f"{path} is damaged: {exc}") from None
    return cluster


# ---------------------------------------------------------------- init


class _InitPlan:
    """``cluster init`` arguments, all checked (nothing is written before this exists)."""

    def __init__(self, args: argparse.Namespace) -> None:
        from node.pki.names import DEFAULT_NODE_HOSTS, PkiError, check_host, check_node_count
        from node.pki.store import make_request, principal_pairs
        from node.server.config import CLUSTER_ID_RE, EPOCH_INTERVAL_RANGE
        from node.state.commands import MAX_APPROVERS, MAX_TIME_LOCK_EPOCHS

        try:
            self.nodes = check_node_count(args.nodes)
        except PkiError as exc:
            raise ClusterError(f"--nodes: {exc}") from None
        self.threshold = args.threshold if args.threshold is not None else min(2, self.nodes)
        if not 1 <= self.threshold <= self.nodes:
            raise ClusterError(f"--threshold must be in 1..{self.nodes} (the number of nodes)")
        self.approvers = _flatten(args.approvers)
        self.operators = _flatten(args.operators)
        self.hosts: list[str] | None = args.hosts
        node_hosts = None
        if self.hosts is not None:
            if len(self.hosts) != self.nodes:
                raise ClusterError(
                    f"--hosts names {len(self.hosts)} hosts for {self.nodes} nodes (one per node)"
                )
            if args.base_port == 0:
                # Free ports can only be picked on this machine, not on the nodes' hosts.
                raise ClusterError("--hosts needs --base-port (the nodes' ports on their hosts)")
            try:
                self.hosts = [check_host(h) for h in self.hosts]
            except PkiError as exc:
                raise ClusterError(f"--hosts: {exc}") from None
            # Loopback names too, so that the API can be reached through ports published
            # on the local machine (a container engine's port mapping).
            node_hosts = [
                [host, *(h for h in DEFAULT_NODE_HOSTS if h != host)] for host in self.hosts
            ]
        self.request = make_request(
            self.nodes,
            node_hosts=node_hosts,
            principals=principal_pairs(
                self.approvers, _flatten(args.clients), self.operators, _flatten(args.auditors)
            ),
        )
        if not self.operators:
            raise ClusterError("at least one --operators name is needed (it signs the bootstrap)")
        if not self.approvers:
            raise ClusterError("at least one --approvers name is needed (governance)")
        if len(self.approvers) > MAX_APPROVERS:
            raise ClusterError(f"at most {MAX_APPROVERS} approvers")
        k = args.governance_k if args.governance_k is not None else min(2, len(self.approvers))
        if not 1 <= k <= len(self.approvers):
            raise ClusterError(
                f"--governance-k must be in 1..{len(self.approvers)} (the number of approvers)"
            )
        self.governance_k = k
        if not 1 <= args.time_lock_epochs <= MAX_TIME_LOCK_EPOCHS:
            raise ClusterError(f"--time-lock-epochs must be in 1..{MAX_TIME_LOCK_EPOCHS}")
        self.time_lock_epochs = args.time_lock_epochs
        lo, hi = EPOCH_INTERVAL_RANGE
        interval = args.epoch_interval
        if not (interval == 0 or lo <= interval <= hi):
            raise ClusterError(f"--epoch-interval must be 0 or in {lo:g}..{hi:g} seconds")
        self.epoch_interval = float(interval)
        if not CLUSTER_ID_RE.fullmatch(args.cluster_id):
            raise ClusterError(
                f"--cluster-id {args.cluster_id[:80]!r} is not [A-Za-z0-9][A-Za-z0-9._-]{{0,63}}"
            )
        self.cluster_id = args.cluster_id
        risky = []
        if self.threshold < 2 and self.nodes >= 2:
            risky.append(f"threshold 1 lets one of {self.nodes} nodes act alone")
        if self.governance_k < 2:
            risky.append("governance k=1 lets one approver change the rules alone")
        if risky and not args.unsafe:
            raise ClusterError("; ".join(risky) + " (pass --unsafe to accept that)")
        self.unsafe = bool(risky)
        top = 65535 - API_PORT_OFFSET - self.nodes
        if args.base_port != 0 and not 1 <= args.base_port <= top:
            raise ClusterError(f"--base-port must be 0 (pick free ports) or in 1..{top}")
        self.base_port = args.base_port
        self.root: Path = args.dir
        self.force: bool = args.force
        _check_init_dir(self.root, self.force)


def _check_init_dir(root: Path, force: bool) -> None:
    if root.is_symlink() or (root.exists() and not root.is_dir()):
        raise ClusterError(f"{root} exists and is not a directory")
    if not root.exists() or not any(root.iterdir()):
        return
    if not force:
        raise ClusterError(f"{root} is not empty (pass --force to replace a cluster directory)")
    if not (root / CLUSTER_FILE).is_file():
        raise ClusterError(
            f"{root} is not empty and has no {CLUSTER_FILE}: not a cluster directory, "
            "refusing to delete it even with --force"
        )
    running = [p.parent.name for p in sorted(root.glob(f"node-*/{PID_FILE}")) if _pid_of(p.parent)]
    if running:
        raise ClusterError(
            f"{', '.join(running)} still running; stop them with `custody cluster down --dir "
            f"{root}` first"
        )


def _clear_dir(root: Path) -> None:
    import shutil

    for child in root.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def _free_ports(count: int) -> list[int]:
    """Ports the kernel hands out on 127.0.0.1, all held open together so they differ."""
    import socket

    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _write_file(path: Path, data: bytes, mode: int) -> None:
    from node.pki.store import write_atomic

    write_atomic(path, data, mode)


def _mkdir(path: Path, mode: int) -> None:
    import os

    path.mkdir(mode=mode, parents=True, exist_ok=True)
    os.chmod(path, mode)


def cmd_init(args: argparse.Namespace) -> int:
    import sys

    from node.hsm.errors import HsmError

    plan = _InitPlan(args)
    root = plan.root
    created_root = not root.exists()
    try:
        if plan.force and not created_root:
            _clear_dir(root)
        result = _build(plan)
    except BaseException as exc:
        # Never leave a half-made cluster behind: remove what this run wrote.
        if created_root:
            import shutil

            shutil.rmtree(root, ignore_errors=True)
        elif root.is_dir():
            _clear_dir(root)
        if isinstance(exc, HsmError) and not isinstance(exc, ValueError):
            print(f"custody: error: {exc}", file=sys.stderr)
            return 1
        raise
    _print_init(plan, result, args.json)
    return 0


def _build(plan: _InitPlan) -> dict[str, Any]:
    """Write everything; returns the cluster.json document (written last)."""
    import datetime as dt
    import json
    import secrets

    from node.client.profile import render_profile
    from node.hsm import softhsm
    from node.pki.manifest import layout, load_pki
    from node.pki.names import SIGNING_ROLES
    from node.pki.store import init_pki, load_approval_key
    from node.server.config import PeerConfig, format_address, load_config, render_config
    from node.state import Bootstrap, Machine, MemberSpec, PrincipalSpec, encode_command
    from node.state.approvals import genesis_of, sign_command

    root = plan.root
    n = plan.nodes
    if plan.base_port:
        raft_ports = [plan.base_port + i for i in range(1, n + 1)]
        api_ports = [plan.base_port + API_PORT_OFFSET + i for i in range(1, n + 1)]
    else:
        ports = _free_ports(2 * n)
        raft_ports, api_ports = ports[:n], ports[n:]
    peers = [
        PeerConfig(
            f"node-{i}", i, ("127.0.0.1", raft_ports[i - 1]), ("127.0.0.1", api_ports[i - 1])
        )
        for i in range(1, n + 1)
    ]
    if plan.hosts is not None:
        # One host per node: peers dial HOST_i, and each node listens on every interface
        # of its own host (HOST_i may resolve elsewhere to an address it does not own:
        # NAT, a container engine's published port).
        peers = [
            PeerConfig(p.name, p.index, (host, p.raft[1]), (host, p.api[1]))
            for p, host in zip(peers, plan.hosts, strict=True)
        ]

    _mkdir(root, 0o700)  # holds every key of the cluster
    root = root.resolve()
    init_pki(root / "pki", plan.request, now=dt.datetime.now(dt.UTC))
    pki = load_pki(root / "pki")

    members = []
    envs = {}
    for peer in peers:
        node_dir = root / peer.name
        _mkdir(node_dir / "hsm", 0o700)
        env = softhsm.create_env(node_dir / "hsm")
        user_pin, so_pin = secrets.token_hex(16), secrets.token_hex(16)
        softhsm.write_pin_file(node_dir / "hsm" / "user.pin", user_pin)
        softhsm.write_pin_file(node_dir / "hsm" / "so.pin", so_pin)
        public_key = softhsm.provision_token(
            env, peer.name, plan.cluster_id, user_pin=user_pin, so_pin=so_pin
        )
        del user_pin, so_pin
        members.append(MemberSpec(peer.name, peer.index, public_key))
        envs[peer.name] = env
        _mkdir(node_dir / "data", 0o700)

    # Every principal with a signing key is registered with it: approvers and operators
    # (approvals, commands) and clients (requests under a grant); auditors have none.
    principals = tuple(
        PrincipalSpec(
            p.name,
            p.role,
            bytes.fromhex(p.approval_public_key_hex)
            if p.role in SIGNING_ROLES and p.approval_public_key_hex
            else b"",
        )
        for p in pki.manifest.principals
    )
    author = plan.operators[0]
    unsigned = Bootstrap(
        request_id="bootstrap",
        author=author,
        cluster_id=plan.cluster_id,
        threshold=plan.threshold,
        members=tuple(members),
        principals=principals,
        governance_approvers=tuple(sorted(plan.approvers)),
        governance_k=plan.governance_k,
        time_lock_epochs=plan.time_lock_epochs,
        unsafe=plan.unsafe,
    )
    bootstrap = sign_command(load_approval_key(pki, author), unsigned, plan.cluster_id)
    genesis = genesis_of(bootstrap)
    outcome = Machine(genesis=genesis).apply_command(bootstrap)
    if not outcome.ok:  # a self-check: the nodes would refuse it the same way
        raise ClusterError(f"the bootstrap would be rejected: {outcome.code}: {outcome.detail}")
    _write_file(root / "bootstrap.bin", encode_command(bootstrap), 0o644)

    for peer in peers:
        text = render_config(
            name=peer.name,
            cluster_id=plan.cluster_id,
            genesis=genesis,
            bootstrap="../bootstrap.bin",
            data_dir="data",
            tls_ca=f"../pki/{layout.CA_CERT}",
            tls_cert=f"../pki/{layout.node_cert(peer.name)}",
            tls_key=f"../pki/{layout.node_key(peer.name)}",
            token_label=peer.name,
            pin_file="hsm/user.pin",
            softhsm_conf="hsm/softhsm2.conf",
            module=envs[peer.name].module_path,
            api_listen=peer.api if plan.hosts is None else (ANY_HOST, peer.api[1]),
            raft_listen=peer.raft if plan.hosts is None else (ANY_HOST, peer.raft[1]),
            peers=peers,
            schedule={"epoch_interval_s": plan.epoch_interval},
        )
        path = root / peer.name / CONFIG_FILE
        _write_file(path, text.encode(), 0o644)
        load_config(path)  # a self-check: what we wrote is what the node will accept

    urls = [f"https://{format_address(p.api)}" for p in peers]
    _mkdir(root / "profiles", 0o755)
    for p in pki.manifest.principals:
        text = render_profile(
            principal=p.name,
            role=p.role,
            cluster_id=plan.cluster_id,
            nodes=urls,
            ca=f"../pki/{layout.CA_CERT}",
            cert=f"../pki/{p.cert}",
            key=f"../pki/{p.key}",
            approval_key=f"../pki/{p.approval_key}" if p.approval_key else None,
        )
        _write_file(root / "profiles" / f"{p.name}.toml", text.encode(), 0o644)

    doc = {
        "v": 1,
        "cluster_id": plan.cluster_id,
        "threshold": plan.threshold,
        "genesis": genesis.hex(),
        "nodes": [
            {
                "name": p.name,
                "index": p.index,
                "raft": format_address(p.raft),
                "api": format_address(p.api),
            }
            for p in peers
        ],
        "principals": [{"name": p.name, "role": p.role} for p in pki.manifest.principals],
    }
    _write_file(root / CLUSTER_FILE, (json.dumps(doc, indent=2) + "\n").encode(), 0o644)
    return doc


def _print_init(plan: _InitPlan, doc: dict[str, Any], as_json: bool) -> None:
    import json

    if as_json:
        out = {
            **doc,
            "dir": str(plan.root.resolve()),
            "governance_approvers": sorted(plan.approvers),
            "governance_k": plan.governance_k,
            "time_lock_epochs": plan.time_lock_epochs,
            "unsafe": plan.unsafe,
        }
        print(json.dumps(out, indent=2))
        return
    root = plan.root
    print(
        f"created cluster {plan.cluster_id!r} in {root}: {plan.nodes} nodes "
        f"(threshold {plan.threshold}), {len(doc['principals'])} principals"
    )
    for n in doc["nodes"]:
        print(f"  {n['name']:<8} raft {n['raft']:<22} api {n['api']}")
    print(
        f"  governance {plan.governance_k} of {', '.join(sorted(plan.approvers))}; "
        f"time lock {plan.time_lock_epochs} epochs"
        + ("; UNSAFE (single-party rules allowed)" if plan.unsafe else "")
    )
    print(f"  genesis {doc['genesis'][:16]}...")
    print(f"start it: custody cluster up --dir {root}")
    print(f"profiles: {root / 'profiles'}/<name>.toml (e.g. CUSTODY_PROFILE=...)")


# ---------------------------------------------------------------- processes


def _proc_matches(pid: int, config: Path) -> bool:
    """Is ``pid`` a live (not zombie) process whose command line names ``config``?"""
    import os

    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
    if stat[stat.rfind(b")") + 2 :].startswith(b"Z"):
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # our own child (in-process callers): reap it
        return False
    return os.fsencode(str(config)) in args


def _read_pid(pid_file: Path) -> int | None:
    try:
        text = pid_file.read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        return None
    return int(text) if text.isascii() and text.isdigit() and 0 < int(text) < 1 << 22 else None


def _pid_of(node_dir: Path) -> int | None:
    """The pid of this node's running process, or None (missing, stale or reused pid)."""
    pid = _read_pid(node_dir / PID_FILE)
    if pid is None or not _proc_matches(pid, (node_dir / CONFIG_FILE).resolve()):
        return None
    return pid


def _node_command(config: Path) -> list[str]:
    import os
    import shlex
    import sys

    override = os.environ.get(NODE_CMD_ENV)
    if override is None:
        return [sys.executable, "-m", "node.cli", "node", "run", "--config", str(config)]
    words = shlex.split(override)
    if not words:
        raise ClusterError(f"${NODE_CMD_ENV} is set but empty")
    return [*words, "--config", str(config)]


def _child_env(softhsm_conf: Path | None) -> dict[str, str]:
    import os

    import node

    env = dict(os.environ)
    project = str(Path(node.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (project, env.get("PYTHONPATH", "")) if p)
    if softhsm_conf is not None:
        env["SOFTHSM2_CONF"] = str(softhsm_conf)
    return env


def _start(node: _Node, softhsm_conf: Path | None) -> Any:
    import datetime as dt
    import os
    import subprocess

    config = node.config.resolve()
    cmd = _node_command(config)
    fd = os.open(node.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "ab") as log:
        stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        log.write(f"--- custody cluster up: starting {node.name} at {stamp} ---\n".encode())
        log.flush()
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=node.dir,
            env=_child_env(softhsm_conf),
            start_new_session=True,
        )
    _write_file(node.pid_file, f"{proc.pid}\n".encode(), 0o644)
    return proc


def _tail(path: Path, lines: int) -> list[str]:
    """The last ``lines`` lines of a text file, reading only the end of it."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, 2)
            size = fh.tell()
            block, data = 8192, b""
            while size > 0 and data.count(b"\n") <= lines:
                step = min(block, size)
                size -= step
                fh.seek(size)
                data = fh.read(step) + data
                block = min(block * 2, 1 << 20)
    except FileNotFoundError:
        return []
    return data.decode("utf-8", errors="replace").splitlines()[-lines:]


# ---------------------------------------------------------------- talking to nodes


def _client_context(cluster: _Cluster) -> Any:
    from node.client.profile import load_profile
    from node.tlsctx import client_context

    profile = load_profile(cluster.root / "profiles" / f"{cluster.operator}.toml")
    return client_context(profile.ca, profile.cert, profile.key)


def _get_json(ctx: Any, node: _Node, path: str, timeout: float) -> dict[str, Any]:
    """GET ``path`` from ``node`` over mTLS, checking it is that node; raises on anything odd."""
    import http.client
    import json

    from node.pki.names import Identity
    from node.server.config import WILDCARD_HOSTS
    from node.tlsctx import peer_identity

    host, port = node.api
    if host in WILDCARD_HOSTS:
        host = "127.0.0.1"
    conn = http.client.HTTPSConnection(host, port, context=ctx, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Accept": "application/json"})
        who = peer_identity(conn.sock)
        if who != Identity(node.name, "node"):
            raise ConnectionError(f"answered by {who.name} ({who.role}), not {node.name}")
        resp = conn.getresponse()
        body = resp.read(MAX_RESPONSE_BYTES + 1)
        if resp.status != 200:
            raise ConnectionError(f"HTTP {resp.status} from {path}")
        if len(body) > MAX_RESPONSE_BYTES:
            raise ConnectionError(f"answer from {path} is too large")
        doc = json.loads(body)
        if not isinstance(doc, dict):
            raise ConnectionError(f"answer from {path} is not a JSON object")
        return doc
    finally:
        conn.close()


def _reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, ConnectionRefusedError):
        text = "connection refused"
    return " ".join(text.split())[:200]


# ---------------------------------------------------------------- up / down / status / logs


def cmd_up(args: argparse.Namespace) -> int:
    import sys
    import time

    from node.server.config import load_config

    if not 0 < args.timeout <= 86400:
        raise ClusterError("--timeout must be in (0, 86400] seconds")
    cluster = _load_cluster(args.dir)
    configs = {n.name: load_config(n.config) for n in cluster.nodes}
    ctx = _client_context(cluster)
    procs: dict[str, Any] = {}
    pids: dict[str, int] = {}
    for node in cluster.nodes:
        pid = _pid_of(node.dir)
        if pid is not None:
            print(f"{node.name}: already running (pid {pid})", flush=True)
            pids[node.name] = pid
            continue
        proc = _start(node, configs[node.name].hsm_softhsm_conf)
        procs[node.name], pids[node.name] = proc, proc.pid
        print(f"{node.name}: started (pid {proc.pid}), log {node.log}", flush=True)

    deadline = time.monotonic() + args.timeout
    shown: dict[str, str] = {}
    while True:
        reasons: dict[str, str] = {}
        roles: dict[str, str] = {}
        for node in cluster.nodes:
            proc = procs.get(node.name)
            code = proc.poll() if proc is not None else None
            if code is not None or not _proc_matches(pids[node.name], node.config.resolve()):
                how = f"exited with status {code}" if code is not None else "is no longer running"
                return _up_failed(node, f"{node.name} (pid {pids[node.name]}) {how}")
            try:
                health = _get_json(ctx, node, "/v1/sys/health", timeout=2.0)
            except Exception as exc:  # any failure just means "not ready yet"
                reasons[node.name] = _reason(exc)
                continue
            if health.get("status") != "ok":
                reasons[node.name] = f"health status {str(health.get('status'))[:40]!r}"
                continue
            roles[node.name] = str(health.get("role", "?"))[:20]
        for node in cluster.nodes:
            line = (
                f"healthy ({roles[node.name]})"
                if node.name in roles
                else f"waiting: {reasons[node.name]}"
            )
            if shown.get(node.name) != line:
                shown[node.name] = line
                print(f"{node.name}: {line}", flush=True)
        if len(roles) == len(cluster.nodes) and "leader" in roles.values():
            leader = next(name for name, role in roles.items() if role == "leader")
            print(f"cluster {cluster.cluster_id!r} is up: {len(roles)} nodes, leader {leader}")
            return 0
        if time.monotonic() >= deadline:
            if reasons:
                name = next(iter(reasons))
                return _up_failed(
                    cluster.node(name),
                    f"{name} not healthy after {args.timeout:g} s: {reasons[name]}",
                )
            print(
                f"custody: error: no leader elected after {args.timeout:g} s "
                f"(roles: {', '.join(f'{k}={v}' for k, v in roles.items())})",
                file=sys.stderr,
            )
            return 1
        time.sleep(0.25)


def _up_failed(node: _Node, reason: str) -> int:
    import sys

    print(f"custody: error: {reason}", file=sys.stderr)
    tail = _tail(node.log, LOG_TAIL_ON_FAILURE)
    print(f"--- last {len(tail)} lines of {node.log} ---", file=sys.stderr)
    for line in tail:
        print(f"  {line}", file=sys.stderr)
    print(
        "(nodes already started keep running; `custody cluster down` stops them)", file=sys.stderr
    )
    return 1


def cmd_down(args: argparse.Namespace) -> int:
    import os
    import signal
    import time

    if not 0 <= args.timeout <= 3600:
        raise ClusterError("--timeout must be in 0..3600 seconds")
    cluster = _load_cluster(args.dir)
    pending: dict[str, tuple[_Node, int]] = {}
    for node in cluster.nodes:
        pid = _read_pid(node.pid_file)
        if pid is None or not _proc_matches(pid, node.config.resolve()):
            stale = " (stale pid file removed)" if node.pid_file.exists() else ""
            node.pid_file.unlink(missing_ok=True)
            print(f"{node.name}: not running{stale}")
            continue
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        pending[node.name] = (node, pid)

    def wait(until: float) -> None:
        while pending and time.monotonic() < until:
            for name, (node, pid) in list(pending.items()):
                if not _proc_matches(pid, node.config.resolve()):
                    del pending[name]
                    node.pid_file.unlink(missing_ok=True)
                    print(f"{name}: stopped (pid {pid})")
            if pending:
                time.sleep(0.05)

    wait(time.monotonic() + args.timeout)
    failed = 0
    for name, (_node, pid) in list(pending.items()):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        print(f"{name}: did not stop within {args.timeout:g} s; sent SIGKILL (pid {pid})")
    wait(time.monotonic() + 5.0)
    for name, (_node, pid) in pending.items():
        print(f"{name}: still running after SIGKILL (pid {pid})")
        failed += 1
    return 1 if failed else 0


def cmd_status(args: argparse.Namespace) -> int:
    import json

    cluster = _load_cluster(args.dir)
    ctx = _client_context(cluster)
    rows: list[dict[str, Any]] = []
    for node in cluster.nodes:
        from node.server.config import format_address

        row: dict[str, Any] = {
            "name": node.name,
            "index": node.index,
            "api": format_address(node.api),
            "pid": _pid_of(node.dir),
            "reachable": False,
            "status": None,
            "error": None,
        }
        row["running"] = row["pid"] is not None
        try:
            row["status"] = _get_json(ctx, node, "/v1/sys/status", timeout=3.0)
            row["reachable"] = True
        except Exception as exc:  # reported per node
            row["error"] = _reason(exc)
        rows.append(row)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        _print_status(rows)
    return 0 if all(r["reachable"] for r in rows) else 1


STATUS_KEYS = ("role", "term", "commit", "applied", "epoch", "leader", "health")


def _cell(value: object) -> str:
    import json

    if value is None:
        return "-"
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    return text[:40]


def _print_status(rows: list[dict[str, Any]]) -> None:
    header = ["NODE", "PID", "API", *(k.upper() for k in STATUS_KEYS)]
    table = [header]
    notes = []
    for r in rows:
        pid = str(r["pid"]) if r["pid"] is not None else "-"
        st = r["status"]
        if st is None:
            table.append([r["name"], pid, r["api"], "unreachable", *["-"] * (len(STATUS_KEYS) - 1)])
            notes.append(f"{r['name']}: {r['error']}")
        else:
            table.append([r["name"], pid, r["api"], *(_cell(st.get(k)) for k in STATUS_KEYS)])
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    for note in notes:
        print(note)


def cmd_logs(args: argparse.Namespace) -> int:
    if not 1 <= args.lines <= 100000:
        raise ClusterError("-n must be in 1..100000")
    cluster = _load_cluster(args.dir)
    nodes = [cluster.node(args.node)] if args.node else cluster.nodes
    for i, node in enumerate(nodes):
        if len(nodes) > 1:
            print(("\n" if i else "") + f"==> {node.name} ({node.log}) <==")
        if not node.log.exists():
            print("(no log yet)")
            continue
        for line in _tail(node.log, args.lines):
            print(line)
    return 0


__all__ = [
    "CLUSTER_FILE",
    "NODE_CMD_ENV",
    "ClusterError",
    "cmd_down",
    "cmd_init",
    "cmd_logs",
    "cmd_status",
    "cmd_up",
    "register",
]
