"""What a newcomer meets first: help texts, usage errors, the serve banner, a directory with
no PKI, files that are not what they should be, a port already taken (issue 9, item 8)."""

from __future__ import annotations

import argparse
import re
import socket
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
from asn1crypto.pem import armor as pem_armor
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ca_core.authority import REVOCATION_REASONS
from ca_core.principal import Principal
from ca_core.profiles import BUILTIN_PROFILES
from gateway.app import build_https_app
from gateway.cli import build_parser, main
from gateway.config import Config, load_config
from gateway.runtime import Services
from gateway.server import banner
from tests.helpers import make_csr


def _parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                found.extend(_parsers(child))
    return found


def test_every_command_and_option_has_help() -> None:
    for parser in _parsers(build_parser()):
        assert parser.description, parser.prog
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for choice in action._choices_actions:
                    assert choice.help, f"{parser.prog} {choice.dest}"
            elif not isinstance(action, argparse._HelpAction):
                assert action.help, f"{parser.prog} {action.option_strings or action.dest}"


def test_help_names_every_command_without_markup(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert "``" not in out
    for name in ("init", "serve", "ca", "org", "issue", "revoke", "token", "audit", "acme",
                 "crl", "tsa"):
        assert re.search(rf"^    {name} ", out, re.MULTILINE), name


def test_unknown_option_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--bogus"], ["ca", "--bogus"], ["--bogus", "init"]):
        with pytest.raises(SystemExit) as exited:
            main(argv)
        assert exited.value.code == 2
        err = capsys.readouterr().err
        assert "unrecognized arguments: --bogus" in err, err
        assert "required" not in err


def test_missing_command_lists_the_choices(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "choose a command: init, serve, ca," in capsys.readouterr().err
    assert main(["ca"]) == 2
    assert "vcc-pki ca: error: choose a command: list, export" in capsys.readouterr().err
    assert main(["acme", "eab"]) == 2
    assert "choose a command: create" in capsys.readouterr().err


def test_issue_and_revoke_list_their_values(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["issue", "--help"])
    issue_help = " ".join(capsys.readouterr().out.split())
    for profile in BUILTIN_PROFILES:
        assert (profile.name in issue_help) is (not profile.internal_only), profile.name
    for option in ("--profile", "--org", "--days", "--out", "--chain"):
        assert option in issue_help

    args = parser.parse_args(["revoke", "0A", "--reason", "keyCompromise"])
    assert args.reason == "key_compromise"
    assert parser.parse_args(["revoke", "0A"]).reason == "unspecified"
    with pytest.raises(SystemExit):
        parser.parse_args(["revoke", "0A", "--reason", "stolen"])
    err = capsys.readouterr().err
    assert all(reason in err for reason in REVOCATION_REASONS), err

    with pytest.raises(SystemExit):
        parser.parse_args(["org", "create", "x", "--key", "dsa-1024"])
    assert "unknown key type 'dsa-1024'; use one of ec-p256" in capsys.readouterr().err


def test_serve_help_names_the_ports_and_real_settings(
        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    defaults = Config()
    assert re.search(rf"VCC_PKI_HTTP_PORT [^()]*\(default: {defaults.http_port}\)", out)
    assert re.search(rf"VCC_PKI_HTTPS_PORT [^()]*\(default: {defaults.https_port}\)", out)
    named = set(re.findall(r"VCC_PKI_([A-Z0-9_]+)", out))
    real = {f.name.upper() for f in fields(Config)}
    assert named - {"CONFIG"} <= real, named - real  # nothing invented
    assert real - named == {"LOG_LEVEL", "EXTRA"}  # everything that has an effect


def test_banner_names_every_service() -> None:
    lines = "\n".join(banner(load_config({}), None, "sqlite", "software"))
    for url in ("http://127.0.0.1:8080/ocsp", "http://127.0.0.1:8080/crl/<ca>.crl",
                "http://127.0.0.1:8080/tsa", "http://127.0.0.1:8080/ca/root.pem",
                "https://127.0.0.1:8443/acme/directory",
                "https://127.0.0.1:8443/api/v1/certificates",
                "https://127.0.0.1:8444/.well-known/est/"):
        assert url in lines, url
    # clients must use the public URLs (the ACME directory's own), the listener is where
    # the process binds
    public = "\n".join(banner(load_config({
        "VCC_PKI_BIND": "::1", "VCC_PKI_PUBLIC_HTTPS_URL": "https://pki.example.test/"}),
        None, "sqlite", "software"))
    assert "https://pki.example.test/acme/directory" in public
    assert "HTTPS  https://[::1]:8443" in public and "http://[::1]:8080/ocsp" in public


def _listening() -> socket.socket:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    return taken


@pytest.mark.parametrize("busy", ["VCC_PKI_HTTP_PORT", "VCC_PKI_HTTPS_PORT",
                                  "VCC_PKI_EST_PORT"])
def test_a_port_in_use_names_its_setting(env: Path, busy: str, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["init"]) == 0
    with _listening() as taken, _listening() as other, _listening() as third:
        free, free2 = other.getsockname()[1], third.getsockname()[1]
        other.close()  # free again: serve binds them, and must let them go when one fails
        third.close()
        port = taken.getsockname()[1]
        others = [n for n in ("VCC_PKI_HTTP_PORT", "VCC_PKI_HTTPS_PORT", "VCC_PKI_EST_PORT")
                  if n != busy]
        ports = {others[0]: free, others[1]: free2, busy: port}
        for name, value in ports.items():
            monkeypatch.setenv(name, str(value))
        capsys.readouterr()
        assert main(["serve"]) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"error: port {port} is in use on 127.0.0.1") and busy in err, err
        assert len(err.strip().splitlines()) == 1
        for value in {free, free2}:  # the listeners that did start were closed
            with socket.socket() as again:
                again.bind(("127.0.0.1", value))


@pytest.mark.parametrize("argv", [
    ["ca", "list"], ["issue", "--csr", "svc.csr"], ["revoke", "0A"], ["serve"],
    ["tsa", "chain"], ["crl", "publish"], ["acme", "eab", "create", "--org", "default"],
    ["token", "create", "--org", "default", "--role", "auditor"],
], ids=lambda argv: "-".join(argv[:2]))
def test_no_pki_here_creates_nothing(env: Path, tmp_path: Path, argv: list[str],
                                     monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("VCC_PKI_KEY_PASSPHRASE", "set, so it cannot be what is missing")
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: no PKI here: ") and "run `vcc-pki init`" in err.lower(), err
    assert len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []
    assert main(["init"]) == 0  # init still creates
    assert (env / "vcc-pki.db").exists()


def test_a_database_without_cas_is_no_pki(env: Path, capsys: pytest.CaptureFixture[str]
                                          ) -> None:
    import asyncio

    from db.sqlite import SqliteStore

    async def empty() -> None:
        store = SqliteStore(env / "vcc-pki.db")
        await store.open()
        await store.close()

    asyncio.run(empty())
    (env / "passphrase").write_text("x\n")
    assert main(["ca", "list"]) == 1
    assert capsys.readouterr().err.startswith("error: no PKI in this database")


# --- files that are not what they should be ------------------------------------------------

_EC_PUBLIC_KEY = bytes.fromhex("06072A8648CE3D0201")  # the OID id-ecPublicKey, DER
_UNKNOWN_KEY = bytes.fromhex("06072A8648CE3D0209")  # an OID no library knows
_LIBRARY_TEXT = ("ParseError", "asn1", "Valid PEM", "Tag {", "kind:", "Unknown key type")


def _armor(label: str, der: bytes) -> bytes:
    armored: bytes = pem_armor(label, der)
    return armored


def _unknown_key_csr() -> bytes:
    der = make_csr(pem=False)
    assert der.count(_EC_PUBLIC_KEY) == 1
    return der.replace(_EC_PUBLIC_KEY, _UNKNOWN_KEY)


def _damaged_certificate(certificate_pem: bytes) -> bytes:
    """The certificate with its basicConstraints' cA BOOLEAN re-tagged as an OCTET STRING:
    it loads, and fails once the extensions are read."""
    der = x509.load_pem_x509_certificate(certificate_pem).public_bytes(
        serialization.Encoding.DER)
    inner = bytes.fromhex("040830060101ff")  # OCTET STRING { SEQUENCE { BOOLEAN TRUE ...
    at = der.index(inner) + len(inner) - 3
    return _armor("CERTIFICATE", der[:at] + bytes.fromhex("0401ff") + der[at + 3:])


def test_files_that_are_not_a_csr_or_a_certificate(
        env: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["init"]) == 0
    intermediate = (env / "ca" / "intermediate.pem").read_bytes()
    files = {
        "x.txt": b"hello\n",
        "int.der": bytes.fromhex("3003020101"),
        "short.csr": make_csr(pem=False)[:-20],
        "svc.pem": intermediate,
        "crl.pem": _armor("X509 CRL", bytes.fromhex("3003020101")),
        "alien.csr": _unknown_key_csr(),
        "damaged.pem": _damaged_certificate(intermediate),
        "alien.pem": _armor("CERTIFICATE", x509.load_pem_x509_certificate(intermediate)
                            .public_bytes(serialization.Encoding.DER)
                            .replace(_EC_PUBLIC_KEY, _UNKNOWN_KEY, 1)),
    }
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    capsys.readouterr()
    expected = {
        ("issue", "x.txt"): "x.txt is not a PEM or DER PKCS#10 certificate request",
        ("issue", "int.der"): "int.der is not a PEM or DER PKCS#10 certificate request",
        ("issue", "short.csr"): "short.csr is not a PEM or DER PKCS#10 certificate request",
        ("issue", "svc.pem"): "svc.pem is not a PEM or DER PKCS#10 certificate request "
                              "(its PEM label is CERTIFICATE)",
        ("issue", "crl.pem"): "(its PEM label is X509 CRL)",
        ("issue", "alien.csr"): "alien.csr: the CSR's public key is of an unsupported "
                                "algorithm",
        ("add-cross", "x.txt"): "x.txt holds no PEM certificates",
        ("add-cross", "damaged.pem"): "damaged.pem: certificate 1 is damaged",
        ("add-cross", "alien.pem"): "alien.pem: certificate 1 is damaged or uses an "
                                    "algorithm this CA does not support",
        ("add-cross", "svc.pem"): "svc.pem: this is the CA's own certificate",
    }
    for (command, name), message in expected.items():
        path = str(tmp_path / name)
        argv = (["issue", "--csr", path] if command == "issue"
                else ["ca", "add-cross", "intermediate", path])
        assert main(argv) == 1, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
        assert message in err, err
        assert not any(text in err for text in _LIBRARY_TEXT), err


@pytest.mark.parametrize(("csr", "kind", "detail"), [
    ("garbage", "bad_csr", "not a PEM or DER PKCS#10 certificate request"),
    ("-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----\n",
     "bad_csr", "not a PEM or DER PKCS#10 certificate request"),
    ("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n", "bad_csr",
     "(its PEM label is CERTIFICATE)"),
    ("UNKNOWN_KEY", "bad_csr", "unsupported algorithm"),
], ids=["garbage", "truncated-pem", "certificate", "unknown-key-algorithm"])
async def test_rest_bad_csr_detail_has_no_library_text(
        services: Services, aiohttp_client: Any, csr: str, kind: str, detail: str) -> None:
    if csr == "UNKNOWN_KEY":
        csr = _armor("CERTIFICATE REQUEST", _unknown_key_csr()).decode()
    client = await aiohttp_client(build_https_app(services))
    token = (await services.authority.create_token(
        "default", "cert_manager", principal=Principal.system("test"))).token
    response = await client.post("/api/v1/certificates", json={"csr": csr},
                                 headers={"Authorization": f"Bearer {token}"})
    assert response.status == 400, await response.text()
    problem = await response.json(content_type=None)
    assert problem["type"] == f"urn:vcc-pki:problem:{kind}"
    assert detail in problem["detail"]
    assert not any(text in problem["detail"] for text in _LIBRARY_TEXT), problem
