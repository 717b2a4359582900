"""Where a drill runs: its own network namespace, the nodes' launch environment, their
data disks, and the cleanup of all of it.

As root (and unless `CUSTODY_DRILL_ISOLATION=off`), every drill gets a network
namespace `custody-drill-<tag>-<pid>-<n>` (`ip netns add`, loopback up). The drill's
Python process enters it (`setns`, before it starts any node or client) and leaves it
at the end, so `custody cluster init`, every node, the workload's HTTPS calls, the
CLI commands and the fault helpers all run inside, on its 127.0.0.1; each node runs
with its own group id (`chaos.netfault.node_gid`) so that iptables can tell senders
apart. Rules are only ever applied with `ip netns exec <namespace> ...`; deleting
the namespace deletes them. Nothing touches the host's network.

Disk faults (`disk-full`, `slow-disk`) give every node a data disk of its own: a
64 MiB ext4 image in its directory, loop-mounted on its `data` directory before it
starts (in the host's mount table, under the drill's work directory; unmounted at the
end). `disk-full` fills it with a file and later deletes it; `slow-disk` puts the
node's process in a cgroup v1 blkio group `custody-drill-...` limited to N write IOs
per second on that loop device (fsync waits for them), and lifts the limit later.

`clock-jump` starts every node with libfaketime preloaded, reading its offset from
`<node>/faketime.rc` (`+0` until a fault writes another), with the monotonic clock
left alone (`FAKETIME_DONT_FAKE_MONOTONIC=1`: timeouts and elections use it) and
file times not faked (`NO_FAKE_STAT=1`): only the node's wall clock jumps (see
FAKETIME_ENV). Known limit of libfaketime 0.9.10 (its bug #426): under it, Python's
`time.sleep` fails with EINVAL when the monotonic clock is not faked; the node's serving
path does not call it.

`clean(base)` removes what a crashed drill left behind: fault helpers, mounts, loop
devices, blkio groups and namespaces whose names carry this work base's tag.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import glob
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from chaos import netfault
from chaos.scenario import Scenario, requirements

ISOLATION_ENV = "CUSTODY_DRILL_ISOLATION"  # "off": no namespace (process faults only)
CLONE_NEWNET = 0x40000000
NETNS_DIR = Path("/run/netns")
BLKIO = Path("/sys/fs/cgroup/blkio")
DISK_MB = 64
FILL_NAME = "drill-fill"
FAKETIME_GLOB = "/usr/lib/*/faketime/libfaketime.so.1"
# The offset file is re-read on every call (a jump takes effect at once); only the wall
# clock moves (monotonic time is real, file times are not faked). FORCE_MONOTONIC_FIX=0:
# with the fix on (libfaketime 0.9.10's default here) and the monotonic clock not faked,
# every timed wait on a monotonic condition variable (CPython's GIL) returns at once, the
# GIL thrashes and a node signs about 3x slower, even with a +0 offset.
FAKETIME_ENV = {"FAKETIME_NO_CACHE": "1", "FAKETIME_DONT_FAKE_MONOTONIC": "1",
                "FAKETIME_FORCE_MONOTONIC_FIX": "0", "NO_FAKE_STAT": "1"}  # fmt: skip
PROJECT = Path(__file__).resolve().parents[1]


def base_tag(base: Path) -> str:
    """Six hex digits naming a work base in namespace and cgroup names, so that `clean`
    of one work base never touches another's."""
    return hashlib.sha256(str(base.resolve()).encode()).hexdigest()[:6]


def faketime_lib() -> str | None:
    found = sorted(glob.glob(FAKETIME_GLOB))
    return found[0] if found else None


def _is_root() -> bool:
    return os.geteuid() == 0


def isolation_off() -> bool:
    return os.environ.get(ISOLATION_ENV, "").strip().lower() in ("off", "0", "no", "false")


def capabilities() -> dict[str, str | None]:
    """Each requirement kind (`chaos.scenario.requirements`) -> None if this machine
    and user can meet it, else why not."""
    def tools(*names: str) -> str | None:
        missing = [n for n in names if shutil.which(n) is None]
        return f"{', '.join(missing)} not installed (scripts/bootstrap.sh)" if missing else None

    root = None if _is_root() else "needs root"
    if root is None and isolation_off():
        root = f"{ISOLATION_ENV}=off"
    net = root or tools("ip", "iptables", "iptables-restore")
    disk = root or tools("mount", "umount", "mkfs.ext4")
    slow = disk or (None if (BLKIO / "blkio.throttle.write_iops_device").exists()
                    else f"no cgroup v1 blkio controller at {BLKIO}")  # fmt: skip
    clock = None if faketime_lib() else "libfaketime not installed (apt-get install faketime)"
    return {"network": net, "nfqueue": net, "disk": disk, "slow-disk": slow, "clock": clock}


def skip_reason(sc: Scenario) -> str | None:
    """Why this scenario cannot run here (None: it can)."""
    caps = capabilities()
    why = []
    for kind in sorted(requirements(sc)):
        if caps.get(kind):
            why.append(f"{kind} faults: {caps[kind]}")
    return "; ".join(why) or None


def can_isolate() -> str | None:
    """None if drills run in their own network namespace here, else why not."""
    return capabilities()["network"]


def _run(argv: list[str], input_: str | None = None, timeout: float = 30) -> str:
    p = subprocess.run(argv, input=input_, capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:6])} -> {p.returncode}: {p.stderr.strip()[-500:]}")
    return p.stdout


def _setns(fd: int) -> None:
    if hasattr(os, "setns"):  # Python >= 3.12
        os.setns(fd, CLONE_NEWNET)
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"setns: {os.strerror(e)}")


def _ns_inode(path: str) -> int:
    return os.stat(path).st_ino


class Sandbox:
    """One drill's namespace, launch environment, disks, and fault plumbing."""

    _count = 0

    def __init__(self, root: Path, sc: Scenario, say: Callable[[str], None]) -> None:
        Sandbox._count += 1
        self.root = root
        self.say = say
        self.needs = requirements(sc)
        self.isolated = can_isolate() is None
        tag = base_tag(root.parent)
        self.ns = f"{netfault.NETNS_PREFIX}{tag}-{os.getpid()}-{Sandbox._count}"
        self.cg_prefix = f"custody-drill-{tag}-{os.getpid()}-{Sandbox._count}"
        self.clock = "clock" in self.needs
        self.disks = "disk" in self.needs
        self.faketime = faketime_lib() if self.clock else None
        self._home: int | None = None  # fd of the namespace we came from
        self._ns_ino: int | None = None
        self.eps: dict[str, netfault.Endpoint] = {}
        self.cuts: set[tuple[int, str, str]] = set()
        self.slows: set[netfault.SlowLink] = set()
        self.delayers: dict[int, subprocess.Popen[bytes]] = {}
        self.devices: dict[str, tuple[int, int]] = {}  # node -> (major, minor) of its disk
        self.mounted: list[Path] = []
        self.cgroups: dict[str, Path] = {}

    # ------------------------------------------------------------ namespace

    def enter(self) -> None:
        """Create the namespace and move this process (its main thread) into it."""
        if not self.isolated:
            return
        for argv in netfault.setup_commands(self.ns):
            _run(argv)
        self._home = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        fd = os.open(NETNS_DIR / self.ns, os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(fd)
        finally:
            os.close(fd)
        self._ns_ino = _ns_inode(str(NETNS_DIR / self.ns))
        if _ns_inode("/proc/thread-self/ns/net") != self._ns_ino:
            raise RuntimeError(f"setns into {self.ns} did not take")
        self.say(f"network namespace {self.ns}: every node and client runs inside it")

    def leave(self) -> None:
        if self._home is not None:
            _setns(self._home)
            os.close(self._home)
            self._home = None
        if self.isolated:
            with contextlib.suppress(Exception):
                _run(["ip", "netns", "del", self.ns])

    def set_nodes(self, cluster_doc: dict[str, Any]) -> None:
        self.eps = netfault.endpoints(cluster_doc["nodes"])

    # ------------------------------------------------------------ launching nodes

    def node_gid(self, name: str) -> int | None:
        return netfault.node_gid(name) if self.isolated else None

    def node_env(self, name: str) -> dict[str, str]:
        if not self.faketime:
            return {}
        rc = self.root / name / "faketime.rc"
        if not rc.exists():
            self._write_clock(rc, 0)
        pre = " ".join(p for p in (self.faketime, os.environ.get("LD_PRELOAD", "")) if p)
        return {"LD_PRELOAD": pre, "FAKETIME_TIMESTAMP_FILE": str(rc), **FAKETIME_ENV}

    def check_node(self, name: str, pid: int) -> None:
        """A node just started: it must be inside the namespace (and have libfaketime
        loaded where clocks jump); else the drill stops here."""
        if self._ns_ino is not None:
            ino = None
            with contextlib.suppress(OSError):
                ino = _ns_inode(f"/proc/{pid}/ns/net")
            if ino is not None and ino != self._ns_ino:
                os.kill(pid, signal.SIGKILL)
                raise RuntimeError(f"{name} (pid {pid}) started outside {self.ns}")

    def faketime_loaded(self, pid: int) -> bool:
        try:
            return "libfaketime" in Path(f"/proc/{pid}/maps").read_text()
        except OSError:
            return False

    # ------------------------------------------------------------ network faults

    def apply_rules(self) -> None:
        text = netfault.ruleset(self.eps, self.cuts, self.slows)
        _run(netfault.restore_command(self.ns), input_=text)

    def start_delayer(self, s: netfault.SlowLink, jitter_ms: float, seed: int) -> None:
        log = open(self.root / f"netdelay-{s.fault}.log", "ab")  # noqa: SIM115 - the child owns it
        try:
            p = subprocess.Popen(
                netfault.delayer_command(self.ns, sys.executable, s, jitter_ms, seed,
                                         str(self.root)),
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=PROJECT,
                env={**os.environ, "PYTHONPATH": str(PROJECT)},
            )  # fmt: skip
        finally:
            log.close()
        self.delayers[s.fault] = p
        (self.root / f"netdelay-{s.fault}.pid").write_text(f"{p.pid}\n")
        time.sleep(0.3)
        if p.poll() is not None:
            raise RuntimeError(f"the link delayer exited ({p.returncode}); see "
                               f"{self.root / f'netdelay-{s.fault}.log'}")  # fmt: skip

    def stop_delayer(self, fault: int) -> str:
        """Stop fault `fault`'s delayer (it releases what it holds); its last words."""
        p = self.delayers.pop(fault, None)
        if p is None:
            return ""
        with contextlib.suppress(ProcessLookupError):
            p.terminate()
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=5)
        with contextlib.suppress(OSError, IndexError):
            return (self.root / f"netdelay-{fault}.log").read_text().splitlines()[-1]
        return ""

    # ------------------------------------------------------------ clocks

    @staticmethod
    def _write_clock(rc: Path, offset: float) -> None:
        tmp = rc.with_suffix(".tmp")
        tmp.write_text(f"{round(offset):+d}\n")
        os.replace(tmp, rc)  # libfaketime re-reads it on every call: never half-written

    def set_clock(self, name: str, offset: float) -> None:
        self._write_clock(self.root / name / "faketime.rc", offset)

    # ------------------------------------------------------------ disks

    def prepare_disks(self, names: list[str]) -> None:
        """A loop-mounted ext4 image as each node's data directory (before it starts)."""
        if not self.disks:
            return
        for name in names:
            data = self.root / name / "data"
            data.mkdir(mode=0o700, exist_ok=True)
            if any(data.iterdir()):
                raise RuntimeError(f"{data} is not empty: cannot mount a disk on it")
            img = self.root / name / "disk.img"
            with open(img, "wb") as fh:
                fh.truncate(DISK_MB << 20)
            _run(["mkfs.ext4", "-q", "-F", "-m", "0", "-E", "nodiscard", str(img)], timeout=60)
            _run(["mount", "-o", "loop,nosuid,nodev", str(img), str(data)])
            self.mounted.append(data)
            os.chmod(data, 0o700)
            with contextlib.suppress(OSError):
                (data / "lost+found").rmdir()
            st = os.stat(data)
            self.devices[name] = (os.major(st.st_dev), os.minor(st.st_dev))
        self.say(f"data disks: {DISK_MB} MiB ext4 loop mounts for {', '.join(names)}")

    def fill(self, name: str) -> int:
        """Fill the node's data disk to the last block; the bytes written."""
        path = self.root / name / "data" / FILL_NAME
        total = 0
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            for chunk in (1 << 20, 64 << 10, 4 << 10, 512):
                buf = b"\0" * chunk
                while True:
                    try:
                        total += os.write(fd, buf)
                    except OSError as exc:
                        if exc.errno != errno.ENOSPC:
                            raise
                        break
            with contextlib.suppress(OSError):
                os.fsync(fd)
        finally:
            os.close(fd)
        return total

    def free(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.root / name / "data" / FILL_NAME).unlink()

    def free_bytes(self, name: str) -> int:
        st = os.statvfs(self.root / name / "data")
        return st.f_bavail * st.f_frsize

    def throttle(self, name: str, pid: int, write_iops: int) -> None:
        """Limit the node's writes to its data disk to `write_iops` per second."""
        cg = BLKIO / f"{self.cg_prefix}-{name}"
        cg.mkdir(exist_ok=True)
        self.cgroups[name] = cg
        major, minor = self.devices[name]
        (cg / "blkio.throttle.write_iops_device").write_text(f"{major}:{minor} {write_iops}\n")
        (cg / "cgroup.procs").write_text(f"{pid}\n")

    def unthrottle(self, name: str) -> None:
        cg = self.cgroups.get(name)
        if cg is None:
            return
        major, minor = self.devices[name]
        with contextlib.suppress(OSError):
            (cg / "blkio.throttle.write_iops_device").write_text(f"{major}:{minor} 0\n")

    def fsync_probe(self, name: str, n: int = 3) -> list[float]:
        """Milliseconds per fsync of a 4 KiB append to the node's disk, from a process in
        the node's blkio group (so it shares the node's limit), n times."""
        cg = self.cgroups.get(name)
        data = self.root / name / "data" / "drill-probe"
        code = ("import os,sys,time\nfd=os.open(sys.argv[1],os.O_WRONLY|os.O_CREAT|os.O_APPEND)"
                "\nfor _ in range(int(sys.argv[2])):\n os.write(fd,b'x'*4096);t=time.perf_counter()"
                "\n os.fsync(fd);print((time.perf_counter()-t)*1000)\n")  # fmt: skip
        join = f"echo $$ > {cg / 'cgroup.procs'}; " if cg else ""
        out = _run(["sh", "-c", f'{join}exec "$0" -c "$1" "$2" "$3"', sys.executable, code,
                    str(data), str(n)], timeout=120)  # fmt: skip
        with contextlib.suppress(OSError):
            data.unlink()
        return [round(float(x), 1) for x in out.split()]

    # ------------------------------------------------------------ the end

    def teardown(self) -> list[str]:
        """Undo everything (the nodes are already stopped); problems, if any."""
        problems = []
        for fault in list(self.delayers):
            self.stop_delayer(fault)
        for cg in self.cgroups.values():
            problems += _remove_cgroup(cg)
        self.cgroups.clear()
        for data in reversed(self.mounted):
            problems += _umount(data)
        self.mounted.clear()
        try:
            self.leave()
        except OSError as exc:
            problems.append(f"leaving {self.ns}: {exc}")
        return problems


def _umount(path: Path) -> list[str]:
    for args in (["umount", str(path)], ["umount", "-l", str(path)]):
        p = subprocess.run(args, capture_output=True, text=True, timeout=30)
        if p.returncode == 0:
            return []
    return [f"could not unmount {path}: {p.stderr.strip()}"]


def _remove_cgroup(cg: Path) -> list[str]:
    with contextlib.suppress(OSError):
        for pid in (cg / "cgroup.procs").read_text().split():
            with contextlib.suppress(OSError):
                (BLKIO / "cgroup.procs").write_text(f"{pid}\n")
    for _ in range(20):
        try:
            cg.rmdir()
            return []
        except FileNotFoundError:
            return []
        except OSError:
            time.sleep(0.1)
    return [f"could not remove {cg}"]


# ---------------------------------------------------------------- custody drill clean


def _mounts_under(base: Path) -> list[Path]:
    out = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            mp = line.split()[4].replace("\\040", " ")
            if Path(mp).is_relative_to(base):
                out.append(Path(mp))
    return sorted(out, reverse=True)


def _helpers_under(base: Path) -> list[int]:
    """Pids of link delayers (`python -m chaos.netdelay --tag DIR`) with DIR under base."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            argv = (d / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"chaos.netdelay" in argv and b"--tag" in argv:
            tag = argv[argv.index(b"--tag") + 1].decode(errors="replace")
            if Path(tag).is_relative_to(base):
                out.append(int(d.name))
    return out


def clean(base: Path) -> list[str]:
    """Remove a crashed drill's leftovers under work base `base`; what was done."""
    base = base.resolve()
    tag = base_tag(base)
    done = []
    for pid in _helpers_under(base):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
            done.append(f"killed link delayer (pid {pid})")
    for mp in _mounts_under(base):
        problems = _umount(mp)
        done.append(problems[0] if problems else f"unmounted {mp}")
    if shutil.which("losetup"):
        with contextlib.suppress(Exception):
            doc = json.loads(_run(["losetup", "--list", "--json"]) or "{}")
            for dev in doc.get("loopdevices", []):
                back = str(dev.get("back-file") or "").removesuffix(" (deleted)")
                if back and Path(back).is_relative_to(base):
                    with contextlib.suppress(Exception):
                        _run(["losetup", "-d", dev["name"]])
                        done.append(f"detached {dev['name']} ({back})")
    if BLKIO.is_dir():
        for cg in sorted(BLKIO.glob(f"custody-drill-{tag}-*")):
            problems = _remove_cgroup(cg)
            done.append(problems[0] if problems else f"removed blkio group {cg.name}")
    if NETNS_DIR.is_dir() and shutil.which("ip"):
        for ns in sorted(NETNS_DIR.glob(f"{netfault.NETNS_PREFIX}{tag}-*")):
            try:
                _run(["ip", "netns", "del", ns.name])
                done.append(f"deleted network namespace {ns.name}")
            except Exception as exc:
                done.append(f"could not delete network namespace {ns.name}: {exc}")
    return done
