"""`vcc-pki scep ...`: endpoint policy (manual approval), the static challenge of an
endpoint and the approval queue, driven through the command line on a PKI that `vcc-pki
init` made; SCEP messages go through the ScepService the gateway wires (Services.scep), on
the same database."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

import pytest

from ca_core import scep_attributes as sa
from ca_core.cms import verify_signed
from gateway.cli import main
from gateway.config import load_config
from gateway.runtime import open_services
from tests.test_scep import Requester, csr_for, issuer_and_subject, pki_message, requester


def send(who: Requester, content: bytes, transaction_id: str, message_type: str = "19",
         profile: str | None = None) -> tuple[str | None, str | None]:
    """(pkiStatus, failInfo) of the CertRep the gateway's SCEP service answers."""
    async def run() -> tuple[str | None, str | None]:
        async with open_services(load_config()) as services:
            await services.authority.load()
            endpoint = await services.scep.endpoint("default", profile)
            ra = await services.scep.ra_certificate(endpoint)
            issuing = (await services.authority.ca("default-issuing")).certificate
            body = content if message_type != "20" else issuer_and_subject(issuing)
            reply = await services.scep.pki_operation(endpoint, await pki_message(
                who, ra, body, transaction_id=transaction_id, message_type=message_type))
            attrs = verify_signed(reply, content=b"").signed_attrs
            return sa.read_text(attrs, sa.PKI_STATUS), sa.read_text(attrs, sa.FAIL_INFO)
    return asyncio.run(run())


def test_approval_queue_and_static_secret(env: Path, capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    assert main(["init"]) == 0
    capsys.readouterr()
    assert main(["scep", "profile", "set", "--org", "default", "--require-approval"]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "org": "default", "profile": "external_integration", "require_approval": True,
        "static_challenge": False}
    monkeypatch.setattr("sys.stdin", io.StringIO("cli-static-secret\n"))
    assert main(["scep", "secret", "set", "--org", "default"]) == 0
    assert "set (stored as a scrypt hash)" in capsys.readouterr().out
    assert main(["scep", "profile", "list"]) == 0
    [row] = capsys.readouterr().out.splitlines()[1:]
    assert row.split() == ["default", "external_integration", "required", "set"]

    who, other = requester("cli-device"), requester("cli-other")
    assert send(who, csr_for(who, "cli-static-secret", cn="cli-device"), "tid-cli") == (
        "3", None)
    assert send(other, csr_for(other, "cli-static-secret", cn="cli-other"), "tid-cli-2") == (
        "3", None)
    assert main(["scep", "pending", "list", "--org", "default"]) == 0
    rows = capsys.readouterr().out.splitlines()[1:]
    assert [r.split()[0] for r in rows] == ["tid-cli", "tid-cli-2"]
    assert "static" in rows[0] and "CN=cli-device" in rows[0]
    assert main(["scep", "pending", "approve", "tid-cli"]) == 0
    assert "approved: certificate" in capsys.readouterr().out
    assert main(["scep", "pending", "reject", "tid-cli-2"]) == 0
    assert "rejected" in capsys.readouterr().out
    assert send(who, b"", "tid-cli", message_type="20") == ("0", None)
    assert send(other, b"", "tid-cli-2", message_type="20") == ("2", "2")
    assert main(["scep", "pending", "list"]) == 0
    assert capsys.readouterr().out.splitlines()[1:] == []
    # decided already, unknown: one line on stderr, exit 1
    assert main(["scep", "pending", "approve", "tid-cli-2"]) == 1
    assert main(["scep", "pending", "reject", "nope"]) == 1
    err = capsys.readouterr().err
    assert "rejected already" in err and "no pending SCEP request" in err

    assert main(["scep", "secret", "set", "--org", "default", "--clear"]) == 0
    assert main(["scep", "profile", "set", "--org", "default", "--no-require-approval"]) == 0
    assert json.loads(capsys.readouterr().out.split("\n", 1)[1])["static_challenge"] is False
    third = requester("cli-third")
    assert send(third, csr_for(third, "cli-static-secret", cn="cli-third"), "tid-3") == (
        "2", "2")
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    assert main(["scep", "secret", "set", "--org", "default"]) == 1
    assert "8 to 255 printable characters" in capsys.readouterr().err
