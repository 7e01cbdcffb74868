"""REST issuance with openssl + curl against `vcc-pki serve`, for each key backend and
database: the chain verifies with `openssl verify`, revocation shows, SIGTERM stops cleanly."""

from __future__ import annotations

import asyncio
import signal
import subprocess
from pathlib import Path

import pytest

from conformance.gateway import BIN, running_gateway

SCRIPT = Path(__file__).with_name("rest_openssl.sh")


def _run_script(gateway_env: dict[str, str], http_url: str, https_url: str, key_alg: str
                ) -> None:
    result = subprocess.run(
        ["bash", str(SCRIPT)],
        env={**gateway_env, "HTTP_URL": http_url, "HTTPS_URL": https_url, "KEY_ALG": key_alg,
             "VCC_PKI_BIN": str(BIN)},
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    assert result.stdout.rstrip().endswith("OK")


def _serve_and_check(data_dir: Path, env: dict[str, str]) -> None:
    with running_gateway(data_dir, env) as gateway:
        _run_script(gateway.env, gateway.http_url, gateway.https_url, "ec")
        _run_script(gateway.env, gateway.http_url, gateway.https_url, "rsa")
        gateway.process.send_signal(signal.SIGTERM)
        assert gateway.process.wait(timeout=30) == 0  # graceful shutdown


def test_software_keys_sqlite(tmp_path: Path) -> None:
    _serve_and_check(tmp_path / "data", {"VCC_PKI_KEY_PASSPHRASE": "conformance"})


@pytest.mark.softhsm
def test_softhsm_keys_sqlite(tmp_path: Path) -> None:
    from tests.softhsm import make_softhsm_token, require_softhsm

    require_softhsm()
    token = make_softhsm_token(tmp_path / "hsm", label="vcc-conformance")
    _serve_and_check(tmp_path / "data", {
        "SOFTHSM2_CONF": str(token.conf_path),
        "VCC_PKI_KEY_BACKEND": "pkcs11",
        "VCC_PKI_PKCS11_MODULE": token.module_path,
        "VCC_PKI_PKCS11_TOKEN_LABEL": token.label,
        "VCC_PKI_PKCS11_PIN": token.pin,
    })
    # The CA keys (root, intermediate, issuing), the issuing CA's delegated OCSP
    # responder key and the time-stamping authority's key are token objects: sensitive,
    # never extractable.
    listing = subprocess.run(
        ["pkcs11-tool", "--module", token.module_path, "--token-label", token.label,
         "--login", "--pin", token.pin, "--list-objects", "--type", "privkey"],
        env={"SOFTHSM2_CONF": str(token.conf_path)}, capture_output=True, text=True,
        check=True,
    ).stdout
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
