"""Shared fixtures: a fresh CA hierarchy in a temp dir, on SQLite with software keys."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ca_core.authority import Authority, CASettings
from ca_core.hierarchy import ensure_hierarchy
from ca_core.keys import KeySpec
from ca_core.signers.software import SoftwareKeyBackend
from db.sqlite import SqliteStore
from gateway.runtime import Services
from tests.helpers import fresh_services


@dataclass
class Pki:
    authority: Authority
    store: SqliteStore
    data_dir: Path


@pytest.fixture
async def pki(tmp_path: Path) -> AsyncIterator[Pki]:
    store = SqliteStore(tmp_path / "pki.db")
    await store.open()
    keys = SoftwareKeyBackend(tmp_path / "keys", b"test-passphrase")
    settings = CASettings(
        root_key=KeySpec.parse("ec-p256"), intermediate_key=KeySpec.parse("ec-p256"),
    )
    authority = Authority(store, keys, settings)
    await ensure_hierarchy(authority)
    await authority.load()
    yield Pki(authority, store, tmp_path)
    await store.close()


@pytest.fixture
async def services(tmp_path: Path) -> AsyncIterator[Services]:
    """Gateway services on a fresh PKI (SQLite, software keys), as `vcc-pki init` makes it."""
    async with fresh_services(tmp_path) as opened:
        yield opened


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """For CLI tests: VCC_PKI_DATA_DIR in this test's directory, and no config file or
    passphrase, database, key backend or workers from the caller's environment. The data
    directory's path."""
    monkeypatch.setenv("VCC_PKI_DATA_DIR", str(tmp_path / "data"))
    for name in ("VCC_PKI_CONFIG", "VCC_PKI_KEY_PASSPHRASE", "VCC_PKI_DATABASE_URL",
                 "VCC_PKI_KEY_BACKEND", "VCC_PKI_WORKERS"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path / "data"
