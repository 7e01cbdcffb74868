"""The service registry (issue 14) against `vcc-pki serve`: `vcc-pki service bootstrap`
twice (the second changes nothing), then a bootstrapped service calls
/api/v1/services/... on the EST port with its own certificate and key (curl, mTLS)."""

from __future__ import annotations

from pathlib import Path

from conformance.gateway import assert_clean_log, run_script, running_gateway

SCRIPT = Path(__file__).with_name("services_curl.sh")


def test_bootstrap_then_mtls(tmp_path: Path) -> None:
    with running_gateway(tmp_path / "data", {"VCC_PKI_KEY_PASSPHRASE": "conformance"}
                         ) as gateway:
        run_script(SCRIPT, gateway)
    assert_clean_log(tmp_path / "data")
