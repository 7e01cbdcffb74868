"""`vcc-pki template list|show|create|update|delete` (issue 13): the AdminService's template
calls, as the REST API makes them, from the command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.cli import main
from tests.helpers import make_csr


def test_template_commands(env: Path, tmp_path: Path,
                           capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["init"]) == 0
    assert main(["org", "create", "health", "--name", "Health"]) == 0
    capsys.readouterr()

    assert main(["template", "create", "web-short", "--org", "health", "--base",
                 "vcc_service", "--max-validity-days", "30", "--eku", "serverAuth",
                 "--allowed-keys", "ec-p256,ec-p384", "--description", "short web"]) == 0
    created = json.loads(capsys.readouterr().out)
    assert created["base"] == "vcc_service" and created["extended_key_usage"] == [
        "serverAuth"]
    assert created["max_validity_days"] == 30 and created["default_validity_days"] == 30

    assert main(["template", "list", "--org", "health"]) == 0
    listing = capsys.readouterr().out
    assert "web-short" in listing and "health" in listing and "built-in" in listing
    assert main(["template", "show", "web-short", "--org", "health"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["description"] == "short web"
    assert main(["template", "show", "web-short"]) == 1  # not a global one
    assert "no template" in capsys.readouterr().err

    # issuance from it: its limits apply
    csr = tmp_path / "web.csr"
    csr.write_bytes(make_csr(cn="www.health.example", dns=("www.health.example",)))
    assert main(["issue", "--csr", str(csr), "--org", "health", "--profile",
                 "web-short"]) == 0
    capsys.readouterr()
    assert main(["issue", "--csr", str(csr), "--org", "health", "--profile", "web-short",
                 "--days", "31"]) == 1
    assert "30 days" in capsys.readouterr().err

    # widening is refused, naming the field and the limit
    assert main(["template", "update", "web-short", "--org", "health",
                 "--max-validity-days", "400"]) == 1
    err = capsys.readouterr().err
    assert "max_validity_days" in err and "397" in err
    assert main(["template", "update", "web-short", "--org", "health", "--key-usage",
                 "digitalSignature", "--no-require-san"]) == 1
    assert "require_san" in capsys.readouterr().err
    assert main(["template", "update", "web-short", "--org", "health",
                 "--max-validity-days", "10"]) == 0
    assert json.loads(capsys.readouterr().out)["max_validity_days"] == 10

    # --from a document (as `template show` prints it); options override its fields
    document = tmp_path / "fleet.json"
    document.write_text(json.dumps({**shown, "name": "ignored", "max_validity_days": 20,
                                    "default_validity_days": 10}))
    assert main(["template", "create", "fleet", "--from", str(document),
                 "--description", "global fleet"]) == 0
    fleet = json.loads(capsys.readouterr().out)
    assert fleet["organization_id"] is None and fleet["max_validity_days"] == 20
    assert fleet["description"] == "global fleet"
    (tmp_path / "bad.json").write_text("[1, 2]")
    assert main(["template", "create", "x", "--from", str(tmp_path / "bad.json")]) == 1
    assert "not a JSON object" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text("{nope")
    assert main(["template", "create", "x", "--from", str(tmp_path / "bad.json")]) == 1
    assert "not valid JSON" in capsys.readouterr().err
    assert main(["template", "create", "x", "--from", str(tmp_path / "missing.json")]) == 1
    assert "missing.json" in capsys.readouterr().err

    # built-ins are read-only; a name may not shadow one; bases exclude the CA's own
    assert main(["template", "update", "vcc_service", "--max-validity-days", "30"]) == 1
    assert "built-in" in capsys.readouterr().err
    assert main(["template", "delete", "admin"]) == 1
    assert "built-in" in capsys.readouterr().err
    assert main(["template", "create", "admin", "--base", "admin"]) == 1
    assert "shadow" in capsys.readouterr().err
    assert main(["template", "create", "resp", "--base", "ocsp_signing"]) == 1
    assert "cannot be a base" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["template", "create", "x", "--base", "vcc_service", "--status", "paused"])
    capsys.readouterr()

    assert main(["template", "delete", "web-short", "--org", "health"]) == 0
    assert "deleted" in capsys.readouterr().out
    assert main(["issue", "--csr", str(csr), "--org", "health", "--profile",
                 "web-short"]) == 1
    assert "web-short" in capsys.readouterr().err
    assert main(["audit", "list", "--action", "delete_template"]) == 0
    assert "delete_template" in capsys.readouterr().out
