"""RFC 3161 time-stamping with `openssl ts` + curl against `vcc-pki serve`: SHA-256/384/512
queries with and without certReq and nonce, `openssl ts -verify` against the root alone
(and with -untrusted chain.pem), the file itself, a changed file failing, bad input as
PKIStatus rejections; with software keys, SoftHSM2 keys and PostgreSQL (RSA TSA key)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from conformance.gateway import run_script, running_gateway, softhsm_env, token_private_keys

SCRIPT = Path(__file__).with_name("tsa_openssl.sh")


def _serve_and_check(data_dir: Path, env: dict[str, str]) -> str:
    with running_gateway(data_dir, env) as gateway:
        run_script(SCRIPT, gateway)
        listing = gateway.cli("ca", "list").stdout
    assert " tsa " in listing
    return listing


def test_software_keys_sqlite(tmp_path: Path) -> None:
    _serve_and_check(tmp_path / "data", {"VCC_PKI_KEY_PASSPHRASE": "conformance"})


@pytest.mark.softhsm
def test_softhsm_keys_sqlite(tmp_path: Path) -> None:
    from tests.softhsm import make_softhsm_token, require_softhsm

    require_softhsm()
    token = make_softhsm_token(tmp_path / "hsm", label="vcc-tsa-conformance")
    listing = _serve_and_check(tmp_path / "data", softhsm_env(token))
    assert "pkcs11" in listing.split(" tsa ", 1)[1].splitlines()[0]
    # The TSA key is a token object like the CA keys: sensitive, never extractable.
    objects = token_private_keys(token)
    tsa_key = next(block for block in objects.split("Private Key Object")
                   if "label:      vcc-tsa-" in block)
    assert "never extractable" in tsa_key and "sensitive" in tsa_key


@pytest.mark.postgres
def test_rsa_tsa_key_postgresql(tmp_path: Path) -> None:
    from tests.pg import create_throwaway_database, drop_database, require_postgres

    require_postgres()
    dsn = asyncio.run(create_throwaway_database())
    try:
        listing = _serve_and_check(tmp_path / "data", {
            "VCC_PKI_KEY_PASSPHRASE": "conformance", "VCC_PKI_DATABASE_URL": dsn,
            "VCC_PKI_TSA_KEY_TYPE": "rsa-2048",
        })
        assert "RSA-2048" in listing.split(" tsa ", 1)[1].splitlines()[0]
    finally:
        asyncio.run(drop_database(dsn))
