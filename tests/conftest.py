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
from gateway.config import load_config
from gateway.runtime import Services, open_services


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
    config = load_config(environ={
        "VCC_PKI_DATA_DIR": str(tmp_path / "data"),
        "VCC_PKI_KEY_PASSPHRASE": "test-passphrase",
        "VCC_PKI_ROOT_KEY_TYPE": "ec-p256",
        "VCC_PKI_INTERMEDIATE_KEY_TYPE": "ec-p256",
    })
    async with open_services(config, create=True) as opened:
        await ensure_hierarchy(opened.authority)
        await opened.authority.load()
        yield opened
