"""SCEP (RFC 8894) with real clients against `vcc-pki serve`: certmonger (scep-submit,
and a full enrollment by the daemon: conformance/scep_certmonger.sh) and Debian's `scep`
package (micromdm's scepclient): GetCACaps, GetCACert, enrollment with a one-time
challenge and the static one, spent and wrong challenges, renewal and the same renewal
again (conformance/scep_client.sh); with software keys on SQLite and PostgreSQL, and with
the RA key in SoftHSM2."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import pytest

from conformance.gateway import (
    assert_clean_log,
    run_script,
    running_gateway,
    softhsm_env,
    token_private_keys,
)

SCRIPT = Path(__file__).with_name("scep_client.sh")
CERTMONGER = Path(__file__).with_name("scep_certmonger.sh")
STATIC = "static-scep-secret"
# scepclient 2.1 encrypts with single DES only; the gateway opts in (replies are AES-256).
SCEP_ENV = {"VCC_PKI_SCEP_ACCEPT_SINGLE_DES": "true", "VCC_PKI_SCEP_CHALLENGE": STATIC}


def _require(*tools: str) -> None:
    """Skip without the clients; in CI (CI=true) that is a failure, as for the ACME
    clients."""
    missing = [t for t in tools if shutil.which(t) is None]
    if not missing:
        return
    message = f"{', '.join(missing)} not installed (`make system-deps`)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def _enroll(data_dir: Path, env: dict[str, str]) -> None:
    _require("scepclient", "certmonger", "getcert", "dbus-run-session")
    with running_gateway(data_dir, {**env, **SCEP_ENV}) as gateway:
        output = run_script(SCRIPT, gateway, STATIC_CHALLENGE=STATIC)
        assert "device-1/cert.pem: OK" in output  # openssl verified it against the root
        assert output.count("== ") == 8
        output = run_script(CERTMONGER, gateway)
        assert "device.pem: OK" in output
    assert_clean_log(data_dir)


def test_software_keys_sqlite(tmp_path: Path) -> None:
    _enroll(tmp_path / "data", {"VCC_PKI_KEY_PASSPHRASE": "conformance"})


@pytest.mark.softhsm
def test_softhsm_keys_sqlite(tmp_path: Path) -> None:
    from tests.softhsm import make_softhsm_token, require_softhsm

    require_softhsm()
    token = make_softhsm_token(tmp_path / "hsm", label="vcc-scep")
    _enroll(tmp_path / "data", softhsm_env(token))
    # The RA key is a token object beside the CA, OCSP and TSA keys: six private keys.
    listing = token_private_keys(token)
    assert listing.count("Private Key Object") == 6
    assert "vcc-scep-ra-default-issuing" in listing
    # Issue 16: every one of them (CAs, OCSP responder, TSA, RA) is sensitive and was never
    # extractable, as pkcs11-tool reads the token's attributes.
    for block in listing.split("Private Key Object")[1:]:
        access = next(line for line in block.splitlines() if "Access:" in line)
        flags = {flag.strip() for flag in access.partition(":")[2].split(",")}
        assert {"sensitive", "always sensitive", "never extractable"} <= flags, block
        assert "extractable" not in flags, block


@pytest.mark.postgres
def test_software_keys_postgresql_two_workers(tmp_path: Path) -> None:
    # Two serving processes (SO_REUSEPORT): challenges, transactions, approvals and the RA
    # key hold across them through the store.
    from tests.pg import create_throwaway_database, drop_database, require_postgres

    require_postgres()
    dsn = asyncio.run(create_throwaway_database())
    try:
        _enroll(tmp_path / "data", {"VCC_PKI_KEY_PASSPHRASE": "conformance",
                                    "VCC_PKI_DATABASE_URL": dsn, "VCC_PKI_WORKERS": "2"})
    finally:
        asyncio.run(drop_database(dsn))
