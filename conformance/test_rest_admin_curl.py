"""The README's Admin API curl examples (conformance/rest_admin_curl.sh) against `vcc-pki
serve` started the normal way."""

from __future__ import annotations

from pathlib import Path

from conformance.gateway import assert_clean_log, run_script, running_gateway

SCRIPT = Path(__file__).with_name("rest_admin_curl.sh")


def test_admin_api_with_curl(tmp_path: Path) -> None:
    with running_gateway(tmp_path / "data") as gateway:
        run_script(SCRIPT, gateway)
        assert_clean_log(gateway.data_dir)
