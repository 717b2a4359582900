"""The library-only walk-through (FROST, DKG, TDH2 in one process) never prints secrets."""

from __future__ import annotations

import pytest

from shares.rng import SeededRNG
from tests import library_demo as demo


def test_demo_passes_and_prints_no_secret_share(capsys: pytest.CaptureFixture[str]) -> None:
    assert demo.main(SeededRNG("demo-test")) == 0
    out = capsys.readouterr().out
    assert "demo complete: all checks passed" in out
    # Same seed, same DKG: recover the shares the demo used and look for them.
    keys, public = demo._run_dkg(SeededRNG("demo-test"))
    assert public.group_public_key.hex() in out
    for key in keys.values():
        assert key.signing_share.hex() not in out
