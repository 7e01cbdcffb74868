"""`vcc-pki est ...`: labels, one-time secrets and the approval queue, driven through the
command line on a PKI that `vcc-pki init` made; enrollments go through the EstService the
gateway wires (Services.est), on the same database."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from ca_core.est import EnrollmentResult, EstCredentials
from gateway.cli import main
from gateway.config import ConfigError, load_config
from gateway.runtime import open_services
from tests.helpers import bridge_root, make_csr, pem


def enroll(label: str, csr: bytes, user: str, password: str) -> EnrollmentResult:
    async def run() -> EnrollmentResult:
        async with open_services(load_config()) as services:
            await services.authority.load()
            return await services.est.enroll(label, csr, EstCredentials(
                basic_user=user, basic_password=password))
    return asyncio.run(run())


def exit_code(argv: list[str]) -> int:
    """main()'s status, or argparse's (it exits 2 on a bad option value)."""
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)


def test_labels_secrets_and_approval(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["init"]) == 0
    capsys.readouterr()
    assert main(["est", "label", "set", "routers", "--org", "default", "--profile",
                 "vcc_service", "--accept", "basic", "--require-approval",
                 "--key-type", "ec-p384"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown == {"label": "routers", "org": "default", "profile": "vcc_service",
                     "accept": ["basic"], "require_both": False,
                     "require_channel_binding": False, "require_approval": True,
                     "allow_subject_change": False, "supersede_on_reenroll": False,
                     "key_type": "ec-p384"}
    assert main(["est", "label", "set", "rekey", "--org", "default", "--profile",
                 "vcc_service", "--supersede"]) == 0
    assert json.loads(capsys.readouterr().out)["supersede_on_reenroll"] is True
    assert main(["est", "label", "list"]) == 0
    rekey, routers = capsys.readouterr().out.splitlines()[1:]
    assert routers.split() == ["routers", "default", "vcc_service", "basic", "key",
                               "ec-p384", "require_approval"]
    assert rekey.split() == ["rekey", "default", "vcc_service", "basic,certificate", "key",
                             "ec-p256", "supersede_on_reenroll"]

    assert main(["est", "secret", "create", "--org", "default", "--label", "routers",
                 "--subject", "CN=svc.example.test", "--expires", "2h"]) == 0
    out, err = capsys.readouterr()
    lines = dict(line.split(maxsplit=1) for line in out.splitlines())
    user, password = lines["user"], lines["password"]
    assert "CN=svc.example.test" in err and "shown only once" in err

    csr = make_csr(pem=False)
    assert enroll("routers", csr, user, password).retry_after == 60
    assert main(["est", "pending", "list", "--org", "default"]) == 0
    [pending] = capsys.readouterr().out.splitlines()[1:]
    request_id = pending.split()[0]
    assert pending.split()[1] == "routers" and "CN=svc.example.test" in pending
    assert main(["est", "pending", "approve", request_id]) == 0
    assert "approved: certificate" in capsys.readouterr().out
    issued = enroll("routers", csr, user, password)
    assert issued.certificate is not None
    assert main(["est", "pending", "list"]) == 0
    assert capsys.readouterr().out.splitlines()[1:] == []
    assert main(["est", "pending", "reject", request_id]) == 1
    assert "is issued already" in capsys.readouterr().err
    assert main(["audit", "verify"]) == 0
    assert "audit log intact" in capsys.readouterr().out


def test_errors_are_one_line(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["init"]) == 0
    capsys.readouterr()
    for argv, code, message in (
        (["est", "label", "set", "x", "--org", "nope", "--profile", "vcc_service"], 1,
         "no organization 'nope'"),
        (["est", "label", "set", "cacerts", "--org", "default", "--profile", "vcc_service"],
         1, "not an operation name"),
        (["est", "label", "set", "x", "--org", "default", "--profile", "vcc_service",
          "--accept", "password"], 2, "unknown method"),
        (["est", "label", "set", "x", "--org", "default", "--profile", "code_signing",
          "--key-type", "rsa-2048"], 1, "does not allow rsa-2048"),
        (["est", "secret", "create", "--org", "default", "--expires", "soon"], 2,
         "not a duration"),
        (["est", "secret", "create", "--org", "default", "--expires", "100d"], 1,
         "at most 90 days"),
        (["est", "secret", "create", "--org", "default", "--label", "nope"], 1,
         "no EST label 'nope'"),
        (["est", "pending", "approve", "nope"], 1, "no pending EST request"),
    ):
        assert exit_code(argv) == code, argv
        err = capsys.readouterr().err
        assert message in err, (argv, err)
        assert "Traceback" not in err
    assert main(["est", "label", "list"]) == 0
    assert capsys.readouterr().out.splitlines()[1:] == []  # nothing was made


def test_trust_store_setting(tmp_path: Path) -> None:
    missing = load_config(environ={"VCC_PKI_EST_TRUST_STORE": str(tmp_path / "none.pem")})
    with pytest.raises(ConfigError, match="VCC_PKI_EST_TRUST_STORE"):
        missing.est_settings()
    (tmp_path / "bad.pem").write_text("not pem")
    with pytest.raises(ConfigError, match="no PEM certificates"):
        load_config(environ={"VCC_PKI_EST_TRUST_STORE": str(tmp_path / "bad.pem")}
                    ).est_settings()
    _, maker = bridge_root("Maker Device CA")
    (tmp_path / "makers.pem").write_bytes(pem(maker))
    config = load_config(environ={"VCC_PKI_EST_TRUST_STORE": str(tmp_path / "makers.pem"),
                                  "VCC_PKI_EST_TRUSTED_PROXIES": "10.0.0.1, 10.0.0.2",
                                  "VCC_PKI_EST_PORT": "9444"})
    settings = config.est_settings()
    assert settings.trust_store == (maker,)
    assert settings.trusted_proxies == ("10.0.0.1", "10.0.0.2")
    assert config.est_port == 9444 and load_config(environ={}).est_port == 8444
