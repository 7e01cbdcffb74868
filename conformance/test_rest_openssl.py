"""REST issuance with openssl + curl against `vcc-pki serve`, for each key backend and
database: the chain verifies with `openssl verify`, revocation shows, SIGTERM stops cleanly."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest

from conformance.gateway import run_script, running_gateway, softhsm_env, token_private_keys

SCRIPT = Path(__file__).with_name("rest_openssl.sh")


def _serve_and_check(data_dir: Path, env: dict[str, str]) -> None:
    with running_gateway(data_dir, env) as gateway:
        run_script(SCRIPT, gateway, KEY_ALG="ec")
        run_script(SCRIPT, gateway, KEY_ALG="rsa")
        gateway.process.send_signal(signal.SIGTERM)
        assert gateway.process.wait(timeout=30) == 0  # graceful shutdown


def test_software_keys_sqlite(tmp_path: Path) -> None:
    _serve_and_check(tmp_path / "data", {"VCC_PKI_KEY_PASSPHRASE": "conformance"})


@pytest.mark.softhsm
def test_softhsm_keys_sqlite(tmp_path: Path) -> None:
    from tests.softhsm import make_softhsm_token, require_softhsm

    require_softhsm()
    token = make_softhsm_token(tmp_path / "hsm", label="vcc-conformance")
    _serve_and_check(tmp_path / "data", softhsm_env(token))
    # The CA keys (root, intermediate, issuing), the issuing CA's delegated OCSP
    # responder key and the time-stamping authority's key are token objects: sensitive,
    # never extractable.
    listing = token_private_keys(token)
    assert listing.count("Private Key Object") == 5
    assert "never extractable" in listing and "sensitive" in listing


@pytest.mark.postgres
def test_software_keys_postgresql(tmp_path: Path) -> None:
    from tests.pg import create_throwaway_database, drop_database, require_postgres

    require_postgres()
    dsn = asyncio.run(create_throwaway_database())
    try:
        _serve_and_check(tmp_path / "data", {"VCC_PKI_KEY_PASSPHRASE": "conformance",
                                             "VCC_PKI_DATABASE_URL": dsn})
    finally:
        asyncio.run(drop_database(dsn))
