"""The hostile run (conformance/hostile/) against `vcc-pki serve`, short enough for `make
test`: every protocol's surfaces get a few hundred mutated requests and every transport
attack, and the run must pass all its checks: no 5xx, every answer in the protocol's error
form, no dropped connection, the transport attacks refused while the controls are served,
memory flat after warm-up, no certificate beyond the valid requests', the audit chain
intact, no traceback or ERROR in the log; on SQLite and PostgreSQL. The full run
(`python -m conformance.hostile --requests 100000`) is the same with more requests."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from conformance.hostile import run
from conformance.hostile.forms import CHECKS, Answer, tsa
from tests.pg import create_throwaway_database, drop_database, require_postgres


@pytest.mark.timeout(300)  # about 35 s on an idle machine; the bound is for a loaded one
def test_hostile_sqlite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = run(250, 7, {}, tmp_path / "data")
    out = capsys.readouterr().out
    assert code == 0, out
    assert "PASS" in out and "5xx" in out


@pytest.mark.postgres
@pytest.mark.timeout(300)
def test_hostile_postgresql(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    require_postgres()
    dsn = asyncio.run(create_throwaway_database())
    try:
        code = run(120, 8, {"VCC_PKI_DATABASE_URL": dsn}, tmp_path / "data")
    finally:
        asyncio.run(drop_database(dsn))
    assert code == 0, capsys.readouterr().out


def test_the_old_module_name_still_runs() -> None:
    from conformance import hostile_probe

    assert hostile_probe.run is run


def test_error_forms_are_told_apart() -> None:
    """The checks themselves: a 500 or the wrong form is a fault in every protocol."""
    plain = Answer(500, "text/plain", b"internal error")
    assert all(check(plain) is not None for check in CHECKS.values())
    problem = Answer(400, "application/problem+json",
                     b'{"type": "urn:ietf:params:acme:error:malformed", "status": 400}')
    assert CHECKS["acme"](problem) is None and CHECKS["rest"](problem) is None
    assert CHECKS["acme"](Answer(400, "application/problem+json",
                                 b'{"type": "about:blank", "status": 400}')) is not None
    assert CHECKS["est"](Answer(400, "application/problem+json", b"{}")) is not None
    # RFC 3161: a rejection carries no token (asn1crypto's TimeStampResp would want one).
    rejection = bytes.fromhex("3009" "3007" "020102" "03020204")  # badDataFormat (bit 5)
    assert tsa(Answer(200, "application/timestamp-reply", rejection)) is None
    granted_without = bytes.fromhex("3005" "3003" "020100")
    assert tsa(Answer(200, "application/timestamp-reply", granted_without)) is None
    assert tsa(Answer(200, "application/timestamp-reply", b"\x30\x00")) is not None
