"""The operator's admin commands (issue 13): token list/revoke, org list/update/disable,
audit list/export, cert list. They run the same AdminService as the REST API."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography import x509

from gateway.cli import main
from tests.helpers import make_csr


def test_admin_commands(env: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["init"]) == 0
    assert main(["org", "create", "health", "--name", "Health"]) == 0
    csr = tmp_path / "svc.csr"
    csr.write_bytes(make_csr(cn="web.health.example", dns=("web.health.example",)))
    assert main(["issue", "--csr", str(csr), "--org", "health"]) == 0
    capsys.readouterr()

    assert main(["cert", "list", "--org", "health", "--search", "WEB.health"]) == 0
    listing = capsys.readouterr().out
    assert "CN=web.health.example" in listing and listing.count("\n") == 2
    assert main(["cert", "list", "--status", "revoked"]) == 0
    assert capsys.readouterr().out.count("\n") == 1  # the header only

    assert main(["token", "create", "--org", "health", "--role", "auditor"]) == 0
    token_id = capsys.readouterr().err.split()[1]
    assert main(["token", "list", "--org", "health"]) == 0
    assert token_id in capsys.readouterr().out
    assert main(["token", "revoke", token_id]) == 0
    assert "revoked" in capsys.readouterr().out
    assert main(["token", "revoke", token_id]) == 1  # already revoked: not found
    assert main(["token", "list"]) == 0
    assert f"{token_id} " in capsys.readouterr().out

    assert main(["org", "update", "health", "--isolation", "collaborative",
                 "--allowed-names", "health.example", "--max-validity-days", "30"]) == 0
    updated = json.loads(capsys.readouterr().out)
    assert updated["isolation"] == "collaborative"
    assert updated["policy"]["allowed_names"] == ["health.example"]
    csr.write_bytes(make_csr(cn="x.other.example", dns=("x.other.example",)))
    assert main(["issue", "--csr", str(csr), "--org", "health"]) == 1
    assert "policy does not allow x.other.example" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["org", "update", "health", "--isolation", "porous"])
    capsys.readouterr()
    # partners: repeatable, replacing the list; validated; cleared with --no-partners
    assert main(["org", "update", "health", "--partner", "default", "--partner",
                 "default"]) == 0
    assert json.loads(capsys.readouterr().out)["partners"] == ["default"]
    assert main(["org", "list"]) == 0
    assert "collaborative (default)" in capsys.readouterr().out
    assert main(["org", "update", "health", "--partner", "nowhere"]) == 1
    assert "no organization 'nowhere'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["org", "update", "health", "--partner", "default", "--no-partners"])
    capsys.readouterr()
    assert main(["org", "update", "health", "--no-partners"]) == 0
    assert json.loads(capsys.readouterr().out)["partners"] == []

    assert main(["org", "disable", "health"]) == 0
    capsys.readouterr()
    assert main(["org", "list"]) == 0
    assert "disabled" in capsys.readouterr().out
    csr.write_bytes(make_csr(cn="web.health.example", dns=("web.health.example",)))
    assert main(["issue", "--csr", str(csr), "--org", "health"]) == 1
    assert "disabled" in capsys.readouterr().err

    assert main(["audit", "list", "--action", "revoke_token"]) == 0
    assert token_id in capsys.readouterr().out
    assert main(["audit", "export"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [e["seq"] for e in lines] == list(range(1, len(lines) + 1))
    assert {"certificate.issued", "token.revoked", "organization.updated"} <= {
        e["event_type"] for e in lines}
    assert main(["audit", "verify"]) == 0


def test_acme_eab_and_account_commands(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`vcc-pki acme eab create|list|revoke` and `acme account list|deactivate`: the same
    AdminService calls as /api/v1/acme/eab and /api/v1/acme/accounts."""
    import json

    assert main(["init"]) == 0
    capsys.readouterr()
    assert main(["acme", "eab", "create", "--org", "default", "--json"]) == 0
    kid = json.loads(capsys.readouterr().out)["kid"]
    assert main(["acme", "eab", "list"]) == 0
    assert kid in capsys.readouterr().out
    assert main(["acme", "eab", "revoke", kid]) == 0
    assert main(["acme", "eab", "revoke", kid]) == 1  # gone: not found
    assert "no such EAB key" in capsys.readouterr().err
    assert main(["acme", "account", "list"]) == 0
    assert main(["acme", "account", "deactivate", "no-such-account"]) == 1
    assert main(["acme", "account"]) == 2


def test_ca_intermediate_rollover_and_activate(env: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """``vcc-pki ca intermediate|rollover|activate`` go through the AdminService (as POST
    /api/v1/cas does): an organization moved under its own intermediate."""
    assert main(["init"]) == 0
    assert main(["org", "create", "health"]) == 0
    capsys.readouterr()
    assert main(["ca", "intermediate", "--org", "health", "--key", "ec-p256"]) == 0
    assert capsys.readouterr().out.startswith("health-intermediate: intermediate CA of health")
    assert main(["ca", "intermediate", "--org", "health"]) == 1  # exists
    assert "exists" in capsys.readouterr().err
    assert main(["ca", "intermediate"]) == 1  # a shared one needs a name
    capsys.readouterr()
    assert main(["ca", "rollover", "--org", "health", "--parent", "nope"]) == 1
    assert "no intermediate CA named 'nope'" in capsys.readouterr().err
    assert main(["ca", "rollover", "--org", "health", "--parent",
                 "health-intermediate"]) == 0
    assert capsys.readouterr().out.startswith("health-issuing-g2: next issuing CA of health")
    assert main(["ca", "activate", "health-issuing-g2"]) == 0
    assert "health-issuing is retired" in capsys.readouterr().out
    csr = tmp_path / "svc.csr"
    csr.write_bytes(make_csr(cn="web.health.example", dns=("web.health.example",)))
    assert main(["issue", "--csr", str(csr), "--org", "health", "--out",
                 str(tmp_path / "svc.pem")]) == 0
    assert main(["ca", "export", "health-intermediate"]) == 0
    intermediate = x509.load_pem_x509_certificate(capsys.readouterr().out.encode())
    assert main(["ca", "export", "health-issuing-g2"]) == 0
    issuing = x509.load_pem_x509_certificate(capsys.readouterr().out.encode())
    leaf = x509.load_pem_x509_certificate((tmp_path / "svc.pem").read_bytes())
    leaf.verify_directly_issued_by(issuing)
    issuing.verify_directly_issued_by(intermediate)
    assert main(["audit", "verify"]) == 0
