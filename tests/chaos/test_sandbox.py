"""What a drill needs from the machine, and the parts of the sandbox that need no
root: skip reasons, the libfaketime environment and offset file, names tied to the
work base, and `clean` on a base with nothing to clean."""

from __future__ import annotations

from pathlib import Path

import pytest

from chaos import sandbox, scenario
from chaos.sandbox import Sandbox


def caps(**over: str | None) -> dict[str, str | None]:
    base: dict[str, str | None] = {"network": None, "nfqueue": None, "disk": None,
                                   "slow-disk": None, "clock": None}  # fmt: skip
    return {**base, **over}


def test_skip_reasons_name_each_missing_kind(monkeypatch: pytest.MonkeyPatch) -> None:
    load = lambda n: scenario.load(scenario.find(n))  # noqa: E731
    monkeypatch.setattr(sandbox, "capabilities", lambda: caps())
    assert all(sandbox.skip_reason(scenario.load(p)) is None for p in scenario.available())
    monkeypatch.setattr(sandbox, "capabilities",
                        lambda: caps(network="needs root", nfqueue="needs root", disk="needs root",
                                     **{"slow-disk": "needs root"}))  # fmt: skip
    assert sandbox.skip_reason(load("leader-crash")) is None  # process faults always run
    assert sandbox.skip_reason(load("clock-jumps")) is None  # libfaketime needs no root
    assert sandbox.skip_reason(load("bridge-node")) == "network faults: needs root"
    assert sandbox.skip_reason(load("slow-link")) == (
        "network faults: needs root; nfqueue faults: needs root")
    assert sandbox.skip_reason(load("disk-full")) == "disk faults: needs root"
    monkeypatch.setattr(sandbox, "capabilities", lambda: caps(clock="libfaketime not installed"))
    assert sandbox.skip_reason(load("clock-jumps")) == "clock faults: libfaketime not installed"


def test_isolation_off_is_a_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(sandbox.ISOLATION_ENV, "off")
    why = sandbox.capabilities()["network"]
    assert why in ("needs root", "CUSTODY_DRILL_ISOLATION=off")
    assert sandbox.can_isolate() == why


def test_names_carry_the_work_base(tmp_path: Path) -> None:
    a, b = sandbox.base_tag(tmp_path / "a"), sandbox.base_tag(tmp_path / "b")
    assert a != b and len(a) == 6 and a == sandbox.base_tag(tmp_path / "a")
    sb = Sandbox(tmp_path / "a" / "x-s1-9", scenario.load(scenario.find("leader-crash")),
                 print)  # fmt: skip
    assert sb.ns.startswith(f"custody-drill-{a}-") and sb.cg_prefix.startswith(
        f"custody-drill-{a}-")


def test_clock_environment_and_offsets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandbox, "faketime_lib", lambda: "/lib/libfaketime.so.1")
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    (tmp_path / "node-2").mkdir()
    sb = Sandbox(tmp_path, scenario.load(scenario.find("clock-jumps")), print)
    env = sb.node_env("node-2")
    rc = tmp_path / "node-2" / "faketime.rc"
    assert env == {"LD_PRELOAD": "/lib/libfaketime.so.1", "FAKETIME_TIMESTAMP_FILE": str(rc),
                   "FAKETIME_NO_CACHE": "1", "FAKETIME_DONT_FAKE_MONOTONIC": "1",
                   "FAKETIME_FORCE_MONOTONIC_FIX": "0", "NO_FAKE_STAT": "1"}  # fmt: skip
    assert rc.read_text() == "+0\n"  # no offset until a fault sets one
    sb.set_clock("node-2", 3600)
    assert rc.read_text() == "+3600\n"
    sb.set_clock("node-2", -180.4)
    assert rc.read_text() == "-180\n" and not rc.with_suffix(".tmp").exists()
    plain = Sandbox(tmp_path, scenario.load(scenario.find("leader-crash")), print)
    assert plain.node_env("node-2") == {}  # no clock faults: nothing preloaded


def test_clean_with_nothing_to_clean(tmp_path: Path) -> None:
    assert sandbox.clean(tmp_path / "empty") == []
