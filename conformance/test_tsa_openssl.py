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


def test_two_workers_stamp_with_distinct_serials(tmp_path: Path) -> None:
    """Two serving processes (SO_REUSEPORT), a new connection per query so that either may
    answer, both loading the one TSA key: every query granted, every token's serial
    distinct (RFC 3161 2.4.2; 159 random bits, recorded in the store)."""
    import hashlib
    import urllib.request

    from asn1crypto import tsp

    serials: set[int] = set()
    answered = 0
    with running_gateway(tmp_path / "data", {"VCC_PKI_KEY_PASSPHRASE": "conformance",
                                             "VCC_PKI_WORKERS": "2"}) as gateway:
        for number in range(300):
            query = tsp.TimeStampReq({
                "version": "v1",
                "message_imprint": {
                    "hash_algorithm": {"algorithm": "sha256"},
                    "hashed_message": hashlib.sha256(str(number).encode()).digest()},
                "cert_req": False}).dump()
            request = urllib.request.Request(
                f"{gateway.http_url}/tsa", data=query,
                headers={"Content-Type": "application/timestamp-query"})
            with urllib.request.urlopen(request, timeout=30) as response:
                reply = tsp.TimeStampResp.load(response.read())
            assert reply["status"]["status"].native == "granted"
            info = reply["time_stamp_token"]["content"]["encap_content_info"]["content"]
            serials.add(info.parsed["serial_number"].native)
            answered += 1
    assert answered == 300 and len(serials) == 300
