"""Code signing (issue 14) with the CLI against `vcc-pki serve`: `vcc-pki sign` writes
FILE.p7s, `openssl cms -verify` and `openssl ts -verify` (on the token taken out of it)
accept it, a changed file fails, refusals, and `vcc-pki verify` says "valid at signing
time" after the signing certificate is revoked; with software keys and SoftHSM2 keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from conformance.gateway import (
    assert_clean_log,
    run_script,
    running_gateway,
    softhsm_env,
    token_private_keys,
)

SCRIPT = Path(__file__).with_name("sign_openssl.sh")


def test_software_keys_sqlite(tmp_path: Path) -> None:
    with running_gateway(tmp_path / "data", {"VCC_PKI_KEY_PASSPHRASE": "conformance"}
                         ) as gateway:
        run_script(SCRIPT, gateway)
    assert_clean_log(tmp_path / "data")


@pytest.mark.softhsm
def test_softhsm_keys_sqlite(tmp_path: Path) -> None:
    from tests.softhsm import make_softhsm_token, require_softhsm

    require_softhsm()
    token = make_softhsm_token(tmp_path / "hsm", label="vcc-sign-conformance")
    with running_gateway(tmp_path / "data", softhsm_env(token)) as gateway:
        run_script(SCRIPT, gateway)
    # The code-signing key is a token object like the CA keys: never extractable.
    objects = token_private_keys(token)
    key = next(block for block in objects.split("Private Key Object")
               if "label:      vcc-codesign-" in block)
    assert "never extractable" in key and "sensitive" in key
