"""CRLs with `openssl crl -verify` and `openssl verify -crl_check` against `vcc-pki serve`
(conformance/crl_openssl.sh): software keys with two serving processes, partitioned CRLs,
and SoftHSM2 keys."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from conformance.gateway import BIN, running_gateway

SCRIPT = Path(__file__).with_name("crl_openssl.sh")


def _serve_and_check(data_dir: Path, env: dict[str, str]) -> str:
    with running_gateway(data_dir, env) as gateway:
        result = subprocess.run(
            ["bash", str(SCRIPT)],
            env={**gateway.env, "HTTP_URL": gateway.http_url, "HTTPS_URL": gateway.https_url,
                 "VCC_PKI_BIN": str(BIN)},
            capture_output=True, text=True, timeout=300, check=False,
        )
        assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
        assert result.stdout.rstrip().endswith("OK")
    log = (data_dir / "serve.log").read_text()
    assert "Traceback" not in log and " ERROR " not in log, log
    return result.stdout


def test_software_keys_two_workers(tmp_path: Path) -> None:
    out = _serve_and_check(tmp_path / "data", {"VCC_PKI_KEY_PASSPHRASE": "conformance",
                                               "VCC_PKI_WORKERS": "2"})
    assert "/crl/default-issuing.crl" in out


def test_partitioned_crls(tmp_path: Path) -> None:
    out = _serve_and_check(tmp_path / "data", {"VCC_PKI_KEY_PASSPHRASE": "conformance",
                                               "VCC_PKI_CRL_PARTITIONS": "8"})
    assert "/crl/default-issuing/" in out


@pytest.mark.softhsm
def test_softhsm_keys(tmp_path: Path) -> None:
    from tests.softhsm import make_softhsm_token, require_softhsm

    require_softhsm()
    token = make_softhsm_token(tmp_path / "hsm", label="vcc-crl")
    _serve_and_check(tmp_path / "data", {
        "SOFTHSM2_CONF": str(token.conf_path),
        "VCC_PKI_KEY_BACKEND": "pkcs11",
        "VCC_PKI_PKCS11_MODULE": token.module_path,
        "VCC_PKI_PKCS11_TOKEN_LABEL": token.label,
        "VCC_PKI_PKCS11_PIN": token.pin,
    })
