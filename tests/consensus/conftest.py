"""Fixtures for the consensus transport tests: real certificates on disk."""

from __future__ import annotations

from pathlib import Path

import pytest

from consensus import certs


@pytest.fixture(scope="session")
def cluster_certs(tmp_path_factory) -> Path:
    """A cluster CA with node certificates for nodes 1..4 (4 is never a peer)."""
    return certs.write_cluster(tmp_path_factory.mktemp("pki"), [1, 2, 3, 4])


@pytest.fixture(scope="session")
def rogue_certs(tmp_path_factory) -> Path:
    """Another CA issuing a certificate that *also* says node-2."""
    return certs.write_cluster(tmp_path_factory.mktemp("rogue-pki"), [2])
