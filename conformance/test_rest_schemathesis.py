"""schemathesis (PyPI) against `vcc-pki serve` started the normal way: it generates requests
from /api/v1/openapi.json (examples, coverage and fuzzing phases, bounded) with a super
admin's, a cert_manager's and a code_signer's (the one role that signs) bearer token, and
fails on any 5xx and on any response that breaks the document (status code, content type,
schema). The super admin's run leaves out DELETE /api/v1/tokens/{token_id}: schemathesis
finds the token's own id in GET /api/v1/tokens and revokes it, after which every request is
401 (the cert_manager's run covers that operation, refused; tests/test_rest_admin.py covers
revocation)."""

from __future__ import annotations

import ssl
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from conformance.gateway import assert_clean_log, running_gateway

SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"
CHECKS = ("not_a_server_error,status_code_conformance,content_type_conformance,"
          "response_schema_conformance,response_headers_conformance")


@pytest.mark.parametrize("role", ["pki_super_admin", "cert_manager", "code_signer"])
def test_schemathesis_finds_no_5xx_and_no_schema_violation(tmp_path: Path, role: str) -> None:
    exclude = ["--exclude-method", "DELETE"] if role == "pki_super_admin" else []
    with running_gateway(tmp_path / "data") as gateway:
        token = gateway.cli("token", "create", "--org", "default", "--role", role,
                            "--name", "schemathesis").stdout.strip()
        result = subprocess.run(
            [str(SCHEMATHESIS), "run", f"{gateway.https_url}/api/v1/openapi.json",
             "--header", f"Authorization: Bearer {token}", "--tls-verify", "false",
             "--checks", CHECKS, "--max-examples", "15", "--max-time", "20", "--seed", "13",
             "--workers", "1", "--no-shrink", "--phases", "examples,coverage,fuzzing",
             "--generation-allow-x00", "true", "--request-timeout", "20", *exclude],
            capture_output=True, text=True, timeout=240, check=False, cwd=tmp_path)
        summary = result.stdout[-4000:]
        assert result.returncode == 0, summary + result.stderr[-2000:]
        # The token kept working through the run (asked directly: the summary also lists
        # the 401s of the cases schemathesis sends without credentials).
        context = ssl.create_default_context(cafile=str(gateway.data_dir / "ca" / "root.pem"))
        request = urllib.request.Request(f"{gateway.https_url}/api/v1/certificates",
                                         headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, context=context, timeout=30) as response:
            assert response.status == 200
        assert_clean_log(gateway.data_dir)
    print(summary)
