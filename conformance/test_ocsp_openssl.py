"""OCSP with `openssl ocsp` + curl against `vcc-pki serve` (conformance/ocsp_openssl.sh), for
software and SoftHSM2 keys, the in-process cache and Redis, one and two serving processes."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from conformance.gateway import BIN, running_gateway
from tests.redisutil import REDIS_URL, delete_prefix, require_redis, unique_prefix

SCRIPT = Path(__file__).with_name("ocsp_openssl.sh")


def _run_script(env: dict[str, str], http_url: str, https_url: str) -> str:
    result = subprocess.run(
        ["bash", str(SCRIPT)],
        env={**env, "HTTP_URL": http_url, "HTTPS_URL": https_url, "VCC_PKI_BIN": str(BIN)},
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    assert result.stdout.rstrip().endswith("OK")
    return result.stdout


def _serve_and_check(data_dir: Path, env: dict[str, str]) -> None:
    with running_gateway(data_dir, env) as gateway:
        _run_script(gateway.env, gateway.http_url, gateway.https_url)
    log = (data_dir / "serve.log").read_text()
    assert "Traceback" not in log and " ERROR " not in log, log


def _redis_env() -> tuple[dict[str, str], str]:
    require_redis()
    prefix = unique_prefix()
    return {"VCC_PKI_REDIS_URL": REDIS_URL, "VCC_PKI_REDIS_KEY_PREFIX": prefix}, prefix


def test_software_keys_in_process_cache_two_workers(tmp_path: Path) -> None:
    _serve_and_check(tmp_path / "data", {"VCC_PKI_KEY_PASSPHRASE": "conformance",
                                         "VCC_PKI_WORKERS": "2"})


@pytest.mark.redis
def test_software_keys_redis(tmp_path: Path) -> None:
    import asyncio

    env, prefix = _redis_env()
    try:
        _serve_and_check(tmp_path / "data", {"VCC_PKI_KEY_PASSPHRASE": "conformance",
                                             "VCC_PKI_WORKERS": "2", **env})
    finally:
        asyncio.run(delete_prefix(prefix))


def _softhsm_env(tmp_path: Path) -> dict[str, str]:
    from tests.softhsm import make_softhsm_token, require_softhsm

    require_softhsm()
    token = make_softhsm_token(tmp_path / "hsm", label="vcc-ocsp")
    return {
        "SOFTHSM2_CONF": str(token.conf_path),
        "VCC_PKI_KEY_BACKEND": "pkcs11",
        "VCC_PKI_PKCS11_MODULE": token.module_path,
        "VCC_PKI_PKCS11_TOKEN_LABEL": token.label,
        "VCC_PKI_PKCS11_PIN": token.pin,
    }


@pytest.mark.softhsm
def test_softhsm_keys_in_process_cache(tmp_path: Path) -> None:
    _serve_and_check(tmp_path / "data", _softhsm_env(tmp_path))


@pytest.mark.softhsm
@pytest.mark.redis
def test_softhsm_keys_redis(tmp_path: Path) -> None:
    import asyncio

    hsm = _softhsm_env(tmp_path)
    env, prefix = _redis_env()
    try:
        _serve_and_check(tmp_path / "data", {**hsm, **env})
    finally:
        asyncio.run(delete_prefix(prefix))
