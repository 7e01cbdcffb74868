"""CRLs with `openssl crl -verify` and `openssl verify -crl_check` against `vcc-pki serve`
(conformance/crl_openssl.sh): software keys with two serving processes, partitioned CRLs,
and SoftHSM2 keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from conformance.gateway import assert_clean_log, run_script, running_gateway, softhsm_env

SCRIPT = Path(__file__).with_name("crl_openssl.sh")


def _serve_and_check(data_dir: Path, env: dict[str, str]) -> str:
    with running_gateway(data_dir, env) as gateway:
        out = run_script(SCRIPT, gateway)
    assert_clean_log(data_dir)
    return out


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
    _serve_and_check(tmp_path / "data", softhsm_env(token))
