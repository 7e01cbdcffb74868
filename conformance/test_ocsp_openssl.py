"""OCSP with `openssl ocsp` + curl against `vcc-pki serve` (conformance/ocsp_openssl.sh), for
software and SoftHSM2 keys, the in-process cache and Redis, one and two serving processes."""

from __future__ import annotations

from pathlib import Path

import pytest

from conformance.gateway import assert_clean_log, run_script, running_gateway, softhsm_env
from tests.redisutil import REDIS_URL, delete_prefix, require_redis, unique_prefix

SCRIPT = Path(__file__).with_name("ocsp_openssl.sh")


def _serve_and_check(data_dir: Path, env: dict[str, str]) -> None:
    with running_gateway(data_dir, env) as gateway:
        run_script(SCRIPT, gateway)
    assert_clean_log(data_dir)


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
    return softhsm_env(make_softhsm_token(tmp_path / "hsm", label="vcc-ocsp"))


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
