"""The mutation probe (conformance/hostile_probe.py) against `vcc-pki serve`, small enough
for `make test`: every surface answers mutated requests in its own error form, with no
500, no 503 and no traceback in the log, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from conformance.hostile_probe import run
from tests.pg import create_throwaway_database, drop_database, require_postgres

ENV = {"VCC_PKI_KEY_PASSPHRASE": "probe"}


def test_probe_sqlite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(150, 7, ENV, tmp_path / "data") == 0, capsys.readouterr().out


@pytest.mark.postgres
def test_probe_postgresql(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    require_postgres()
    dsn = asyncio.run(create_throwaway_database())
    try:
        code = run(150, 8, {**ENV, "VCC_PKI_DATABASE_URL": dsn}, tmp_path / "data")
    finally:
        asyncio.run(drop_database(dsn))
    assert code == 0, capsys.readouterr().out
