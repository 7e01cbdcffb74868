"""Code signing with time-stamps (issue 14): the REST endpoints, the signature's structure,
real verifiers (``openssl cms -verify``, ``openssl ts -verify``), "valid at signing time"
after revocation and expiry, the signer's lifecycle, bad inputs, refusals, the CLI's
``verify`` and ``sign``, and a PKCS#11 (SoftHSM2) signer."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import datetime as dt
import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from asn1crypto import cms as asn1_cms
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from ca_core import cms as cms_core
from ca_core.code_signing import (
    SIGNATURE_TIME_STAMP_TOKEN,
    InvalidArtifact,
    RevocationInfo,
    SignRequest,
    check_signature,
    check_signature_offline,
)
from ca_core.crl import CrlPublisher
from ca_core.errors import Forbidden
from ca_core.hierarchy import ensure_organization
from ca_core.principal import Principal
from gateway import cli
from gateway.app import build_https_app
from gateway.runtime import Services, crl_settings
from gateway.tls import export_ca_files
from tests.helpers import fresh_services
from tests.softhsm import session_token

SYSTEM = Principal.system("test")
ARTIFACT = b"clara-adapter weights v3\n" * 1000


async def _client(services: Services, aiohttp_client: Any) -> TestClient:
    client: TestClient = await aiohttp_client(build_https_app(services))
    return client


async def _token(services: Services, role: str = "code_signer", org: str = "default"
                 ) -> dict[str, str]:
    created = await services.authority.create_token(org, role, principal=SYSTEM)
    return {"Authorization": f"Bearer {created.token}"}


def _root(services: Services) -> x509.Certificate:
    return next(c.certificate for c in services.authority.loaded_cas()
                if c.record.ca_type == "root")


async def _sign(client: TestClient, auth: dict[str, str], content: bytes = ARTIFACT,
                algorithm: str = "sha256", **extra: Any) -> tuple[int, dict[str, Any]]:
    body = {"hash": hashlib.new(algorithm, content).hexdigest(), "hash_algorithm": algorithm,
            "artifact_type": "lora_adapter", "name": "clara/adapter.safetensors",
            "metadata": {"model": "clara", "version": 3}, **extra}
    response = await client.post("/api/v1/signatures", json=body, headers=auth)
    return response.status, await response.json()


def _openssl(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["openssl", *args], capture_output=True, text=True, timeout=60,
                          input=None if stdin is None else stdin.decode("latin-1"),
                          check=False)


def _files(tmp_path: Path, services: Services, signature: bytes, content: bytes = ARTIFACT
           ) -> tuple[Path, Path, Path]:
    artifact, p7s, root = tmp_path / "adapter.bin", tmp_path / "adapter.bin.p7s", \
        tmp_path / "root.pem"
    artifact.write_bytes(content)
    p7s.write_bytes(signature)
    root.write_bytes(_root(services).public_bytes(serialization.Encoding.PEM))
    return artifact, p7s, root


# ---------------------------------------------------------------------------- signing


@pytest.mark.parametrize("algorithm", ["sha256", "sha512"])
async def test_signature_verifies_with_openssl_and_carries_a_time_stamp(
        services: Services, aiohttp_client: Any, tmp_path: Path, algorithm: str) -> None:
    client = await _client(services, aiohttp_client)
    status, body = await _sign(client, await _token(services), algorithm=algorithm)
    assert status == 201, body
    signature = base64.b64decode(body["signature"])
    assert body["hash_algorithm"] == algorithm and body["timestamped"] is True
    assert body["artifact_type"] == "lora_adapter" and body["metadata"]["version"] == 3

    artifact, p7s, root = _files(tmp_path, services, signature)
    # OpenSSL 3.0 knows no code-signing purpose (3.2 adds "codesign"); its default for cms
    # is S/MIME signing, which wants emailProtection: "-purpose any" checks the path only.
    verified = _openssl("cms", "-verify", "-binary", "-content", str(artifact), "-inform",
                        "DER", "-in", str(p7s), "-CAfile", str(root), "-purpose", "any",
                        "-out", "/dev/null")
    assert "Verification successful" in verified.stderr, verified.stderr
    changed = tmp_path / "changed.bin"
    changed.write_bytes(ARTIFACT + b"!")
    refused = _openssl("cms", "-verify", "-binary", "-content", str(changed), "-inform",
                       "DER", "-in", str(p7s), "-CAfile", str(root), "-purpose", "any",
                       "-out", "/dev/null")
    assert refused.returncode != 0 and "Verification successful" not in refused.stderr

    # The signed attributes: contentType id-data, messageDigest = the hash, signingTime.
    info = asn1_cms.ContentInfo.load(signature)
    signed_data = info["content"]
    assert info["content_type"].native == "signed_data"
    assert signed_data["encap_content_info"]["content"].native is None  # detached
    signer_info = signed_data["signer_infos"][0]
    attrs = {a["type"].native: a["values"][0] for a in signer_info["signed_attrs"]}
    assert attrs["content_type"].native == "data"
    assert attrs["message_digest"].native == hashlib.new(algorithm, ARTIFACT).digest()
    assert "signing_time" in attrs
    assert signer_info["digest_algorithm"]["algorithm"].native == algorithm
    # The signer's certificate: the organization's code_signing certificate.
    signer = cms_core.unverified_signer_certificate(signature)
    eku = signer.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CODE_SIGNING]

    # The unsigned id-aa-signatureTimeStampToken: an RFC 3161 token over the signature
    # value, which `openssl ts -verify` accepts against the same root.
    (unsigned,) = signer_info["unsigned_attrs"]
    assert unsigned["type"].dotted == SIGNATURE_TIME_STAMP_TOKEN
    token = tmp_path / "token.der"
    token.write_bytes(unsigned["values"][0].dump())
    imprint = hashlib.sha256(signer_info["signature"].native).hexdigest()
    checked = _openssl("ts", "-verify", "-in", str(token), "-token_in", "-digest", imprint,
                       "-CAfile", str(root))
    assert "Verification: OK" in checked.stdout, checked.stdout + checked.stderr
    wrong = _openssl("ts", "-verify", "-in", str(token), "-token_in", "-digest",
                     hashlib.sha256(b"another signature").hexdigest(), "-CAfile", str(root))
    assert "Verification: OK" not in wrong.stdout


async def test_each_signature_is_recorded_and_audited_and_signing_again_returns_it(
        services: Services, aiohttp_client: Any) -> None:
    client = await _client(services, aiohttp_client)
    auth = await _token(services)
    status, first = await _sign(client, auth)
    assert status == 201
    status, again = await _sign(client, auth)
    assert status == 200 and again["id"] == first["id"]
    assert again["signature"] == first["signature"]
    record = await services.store.get_code_signature(first["id"])
    assert record is not None and record.timestamp_token is not None
    assert record.artifact_name == "clara/adapter.safetensors"
    events = [e.event for e in await services.store.audit_entries()]
    assert [e.event_type for e in events if e.resource_id == first["id"]] == [
        "code_signature.created", "code_signature.returned"]
    assert [e.event_type for e in events if e.event_type.startswith("code_signer.")] == [
        "code_signer.created"]  # one signer, made on first use


# ---------------------------------------------------------------------------- verifying


async def _verify(client: TestClient, auth: dict[str, str], signature: str, content: bytes,
                  algorithm: str = "sha256") -> tuple[int, dict[str, Any]]:
    response = await client.post("/api/v1/signatures/verify", headers=auth, json={
        "signature": signature, "hash": hashlib.new(algorithm, content).hexdigest(),
        "hash_algorithm": algorithm})
    return response.status, await response.json()


async def test_verify_counts_valid_checks_and_explains_invalid_ones(
        services: Services, aiohttp_client: Any) -> None:
    client = await _client(services, aiohttp_client)
    auth = await _token(services)
    _, signed = await _sign(client, auth)
    for count in (1, 2):
        status, verdict = await _verify(client, auth, signed["signature"], ARTIFACT)
        assert status == 200, verdict
        assert verdict["valid"] and verdict["status"] == "valid"
        assert verdict["valid_at_signing_time"] is True and verdict["reasons"] == []
        assert verdict["signature_id"] == signed["id"]
        assert verdict["verified_count"] == count
        assert verdict["time_stamp"]["tsa"].startswith("CN=VCC-PKI Time-Stamping")
    status, verdict = await _verify(client, auth, signed["signature"], ARTIFACT + b"x")
    assert status == 200
    assert verdict["valid"] is False and verdict["status"] == "invalid"
    assert "messageDigest" in verdict["reasons"][0]
    record = await services.store.get_code_signature(signed["id"])
    assert record is not None and record.verified_count == 2  # a failed check counts not
    assert record.last_verified_at is not None


async def test_revoked_after_the_time_stamp_is_valid_at_signing_time(
        services: Services, aiohttp_client: Any) -> None:
    client = await _client(services, aiohttp_client)
    auth = await _token(services)
    _, signed = await _sign(client, auth)
    # Revocation times have whole seconds (RFC 5280 5.1.2.6): one in the time-stamp's own
    # second is not known to come after it, so the revocation here is a little later.
    await _revoke_later(services, signed["signer"]["serial"], "superseded")
    status, verdict = await _verify(client, auth, signed["signature"], ARTIFACT)
    assert status == 200
    assert verdict["status"] == "valid_at_signing_time" and verdict["valid"] is True, verdict
    assert any("revoked (superseded)" in r and "after the time-stamp" in r
               for r in verdict["reasons"])
    # Signing goes on with a new key: the revoked certificate signs nothing more.
    status, fresh = await _sign(client, auth, content=b"next release")
    assert status == 201 and fresh["signer"]["serial"] != signed["signer"]["serial"]


async def _revoke_later(services: Services, serial: str, reason: str) -> None:
    authority = services.authority
    real_clock = authority.clock
    authority.clock = lambda: real_clock() + dt.timedelta(seconds=2)
    try:
        await authority.revoke(serial, reason, SYSTEM)
    finally:
        authority.clock = real_clock


async def test_compromise_dated_before_the_time_stamp_is_invalid(services: Services,
                                                                 aiohttp_client: Any) -> None:
    client = await _client(services, aiohttp_client)
    auth = await _token(services)
    _, signed = await _sign(client, auth)
    await services.authority.revoke(
        signed["signer"]["serial"], "key_compromise", SYSTEM,
        invalidity_date=dt.datetime.now(dt.UTC) - dt.timedelta(hours=1))
    status, verdict = await _verify(client, auth, signed["signature"], ARTIFACT)
    assert status == 200 and verdict["status"] == "invalid"
    assert "before the signature was time-stamped" in verdict["reasons"][-1]


async def test_expired_certificate_is_valid_at_signing_time_only_with_a_time_stamp(
        services: Services, aiohttp_client: Any) -> None:
    client = await _client(services, aiohttp_client)
    _, signed = await _sign(client, await _token(services))
    signature = base64.b64decode(signed["signature"])
    digest = hashlib.sha256(ARTIFACT).digest()
    roots = [_root(services)]
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=400)  # the certificate: 365 days
    verdict = check_signature(signature, digest, "sha256", roots, later)
    assert verdict.status == "valid_at_signing_time"
    assert any("not valid now" in r for r in verdict.reasons)
    # The same signature without its time-stamp proves nothing about when it was made.
    parsed = asn1_cms.ContentInfo.load(signature)
    info = parsed["content"]["signer_infos"][0]
    info["unsigned_attrs"] = asn1_cms.CMSAttributes([])
    bare = asn1_cms.ContentInfo({"content_type": "signed_data",
                                 "content": parsed["content"]}).dump(force=True)
    assert check_signature(bare, digest, "sha256", roots, dt.datetime.now(dt.UTC)
                           ).status == "valid"
    stale = check_signature(bare, digest, "sha256", roots, later)
    assert stale.status == "invalid" and "no time-stamp" in stale.reasons
    # A time-stamp over something else: the signature was tampered with.
    other = asn1_cms.ContentInfo.load(signature)
    other_info = other["content"]["signer_infos"][0]
    forged = bytearray(other_info["signature"].native)
    forged[-1] ^= 1
    other_info["signature"] = bytes(forged)
    tampered = check_signature(other.dump(force=True), digest, "sha256", roots,
                               dt.datetime.now(dt.UTC))
    assert tampered.status == "invalid"
    # Another root: nothing holds.
    foreign = check_signature(signature, digest, "sha256",
                              [x509.load_pem_x509_certificate(_foreign_root())],
                              dt.datetime.now(dt.UTC))
    assert foreign.status == "invalid"


def _foreign_root() -> bytes:
    from tests.helpers import bridge_root
    return bridge_root()[1].public_bytes(serialization.Encoding.PEM)


def test_revocation_uses_the_invalidity_date() -> None:
    at = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    assert RevocationInfo(at).effective == at
    earlier = at - dt.timedelta(days=3)
    assert RevocationInfo(at, "key_compromise", earlier).effective == earlier


# ---------------------------------------------------------------------------- the signer


async def test_signer_is_made_once_and_renewed_before_expiry(services: Services) -> None:
    signatures = services.signatures
    org = await services.authority.organization("default")
    first, created = await signatures.ensure_signer(org)
    assert created
    again, created = await signatures.ensure_signer(org)
    assert (again, created) == (first, False)
    cert = await services.store.get_certificate_by_id(first.cert_id)
    assert cert is not None and cert.profile == "code_signing"
    real_clock = services.authority.clock
    services.authority.clock = lambda: first.not_after - dt.timedelta(days=29)
    try:
        renewed, created = await signatures.ensure_signer(org)
    finally:
        services.authority.clock = real_clock
    assert created and renewed.cert_id != first.cert_id and renewed.not_after > first.not_after
    assert [s.signer_id for s in await services.store.list_code_signers(org.org_id)] == [
        renewed.signer_id, first.signer_id]


# ---------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(("change", "detail"), [
    ({"artifact_type": "firmware"}, "artifact_type must be one of"),
    ({"hash": "ab" * 31}, "64 hex digits"),
    ({"hash": "zz" * 32}, "hexadecimal"),
    ({"hash": "ab" * 32, "hash_algorithm": "sha512"}, "128 hex digits"),
    ({"hash_algorithm": "md5"}, "hash_algorithm must be one of"),
    ({"hash": 42}, "must be a str"),
    ({"name": ""}, "printable"),
    ({"name": "a\x00b"}, "printable"),
    ({"name": "x" * 1001}, "printable"),
    ({"metadata": ["not", "an", "object"]}, "must be an object"),
    ({"metadata": {"k": "\x00"}}, "NUL"),
    ({"metadata": {"k": float("nan")}}, "JSON object"),
    ({"metadata": {"k": "x" * 9000}}, "at most 8192 bytes"),
])
async def test_bad_sign_requests_are_400_and_sign_nothing(
        services: Services, aiohttp_client: Any, change: dict[str, Any], detail: str) -> None:
    client = await _client(services, aiohttp_client)
    status, body = await _sign(client, await _token(services), **change)
    assert status == 400, body
    assert detail in body["detail"]
    assert await services.store.list_code_signers(
        (await services.authority.organization("default")).org_id) == []


async def test_bad_verify_requests_are_400(services: Services, aiohttp_client: Any) -> None:
    client = await _client(services, aiohttp_client)
    auth = await _token(services)
    good_hash = hashlib.sha256(ARTIFACT).hexdigest()
    for body in ({"signature": "***", "hash": good_hash},
                 {"signature": base64.b64encode(b"not cms").decode(), "hash": good_hash},
                 {"signature": base64.b64encode(b"x").decode(), "hash": "abc"},
                 {"hash": good_hash}):
        response = await client.post("/api/v1/signatures/verify", headers=auth, json=body)
        assert response.status == 400, await response.text()
        assert response.content_type == "application/problem+json"


async def test_other_roles_and_other_organizations_are_refused_and_audited(
        services: Services, aiohttp_client: Any) -> None:
    await ensure_organization(services.authority, "beta", "Beta", SYSTEM)
    client = await _client(services, aiohttp_client)

    async def denials() -> int:
        return sum(e.event.status == "denied" for e in await services.store.audit_entries())

    before = await denials()
    status, _ = await _sign(client, await _token(services, "cert_manager"))
    assert status == 403 and await denials() == before + 1
    status, _ = await _sign(client, await _token(services), organization="beta")
    assert status == 403 and await denials() == before + 2
    # A code signer of beta cannot verify (nor learn of) default's signatures: 404.
    _, signed = await _sign(client, await _token(services))
    status, _ = await _verify(client, await _token(services, org="beta"),
                                 signed["signature"], ARTIFACT)
    assert status == 404 and await denials() == before + 3
    status, _ = await _verify(client, await _token(services, "auditor"),
                                 signed["signature"], ARTIFACT)
    assert status == 403 and await denials() == before + 4
    with pytest.raises(Forbidden):
        await services.signatures.sign(SignRequest("ab" * 32, "ui_bundle", "x"), SYSTEM)


def test_sign_request_checks() -> None:
    good = SignRequest("AB" * 32, "docker_image", "registry/vcc/argus:1.2")
    with pytest.raises(InvalidArtifact):
        dataclasses.replace(good, metadata={"bad": {1, 2}}).checked()  # type: ignore[dict-item]
    assert good.checked()[1] == "ab" * 32


# ---------------------------------------------------------------------------- the CLI


async def test_cli_verify_offline_says_valid_at_signing_time_after_revocation(
        services: Services, aiohttp_client: Any, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    client = await _client(services, aiohttp_client)
    _, signed = await _sign(client, await _token(services))
    artifact, p7s, _ = _files(tmp_path, services, base64.b64decode(signed["signature"]))
    await export_ca_files(services)
    monkeypatch.setenv("VCC_PKI_DATA_DIR", str(services.config.data_dir))
    monkeypatch.delenv("VCC_PKI_CA_BUNDLE", raising=False)

    async def run(*argv: str) -> tuple[int, str]:
        code = await asyncio.to_thread(cli.main, list(argv))
        return code, capsys.readouterr().out

    code, out = await run("verify", str(artifact), str(p7s))
    assert code == 0 and f"{artifact}: valid\n" in out, out
    changed = tmp_path / "changed.bin"
    changed.write_bytes(ARTIFACT[:-1])
    code, out = await run("verify", str(changed), str(p7s))
    assert code == 1 and "NOT valid" in out and "messageDigest" in out

    await _revoke_later(services, signed["signer"]["serial"], "cessation_of_operation")
    publisher = CrlPublisher(services.authority, crl_settings(services.config))
    issuing = await services.authority.issuing_ca(
        await services.authority.organization("default"))
    await publisher.publish_all(issuing.record.name)
    crl_file = tmp_path / "issuing.crl"
    crl_file.write_bytes((await publisher.get(issuing.record.name)).pem)
    code, out = await run("verify", str(artifact), str(p7s), "--crl", str(crl_file))
    assert code == 0 and "valid at signing time" in out, out
    assert "after the time-stamp" in out


async def test_cli_sign_hashes_locally_and_writes_the_p7s(
        services: Services, aiohttp_client: Any, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    client = await _client(services, aiohttp_client)
    artifact = tmp_path / "vcc_clara-3.0-py3-none-any.whl"
    artifact.write_bytes(ARTIFACT)
    created = await services.authority.create_token("default", "code_signer",
                                                    principal=SYSTEM)
    monkeypatch.setenv("VCC_PKI_URL", str(client.make_url("/")))
    monkeypatch.setenv("VCC_PKI_TOKEN", created.token)
    monkeypatch.setenv("VCC_PKI_DATA_DIR", str(services.config.data_dir))
    code = await asyncio.to_thread(cli.main, [
        "sign", str(artifact), "--type", "python_package", "--hash", "sha512",
        "--metadata", json.dumps({"service": "clara"})])
    out = capsys.readouterr().out
    assert code == 0, out
    p7s = artifact.with_name(artifact.name + ".p7s")
    verdict = check_signature(p7s.read_bytes(), hashlib.sha512(ARTIFACT).digest(), "sha512",
                              [_root(services)], dt.datetime.now(dt.UTC))
    assert verdict.status == "valid"
    (stored,) = [e.event for e in await services.store.audit_entries()
                 if e.event.event_type == "code_signature.created"]
    assert stored.data["name"] == artifact.name
    # A role that may not sign: the gateway's refusal, exit 1, nothing written.
    other = tmp_path / "other.tgz"
    other.write_bytes(b"chart")
    auditor = await services.authority.create_token("default", "auditor", principal=SYSTEM)
    monkeypatch.setenv("VCC_PKI_TOKEN", auditor.token)
    code = await asyncio.to_thread(cli.main, ["sign", str(other), "--type", "helm_chart"])
    assert code == 1 and not other.with_name("other.tgz.p7s").exists()
    assert "403" in capsys.readouterr().err


def test_cli_offline_check_reads_the_signature_s_own_hash(tmp_path: Path) -> None:
    used: list[str] = []

    def content_hash(name: str) -> bytes:
        used.append(name)
        return b""

    name, verdict = check_signature_offline(b"not a signature", content_hash, [],
                                            dt.datetime.now(dt.UTC))
    assert verdict.status == "invalid" and used == [] and name == ""


# ---------------------------------------------------------------------------- PKCS#11


@pytest.mark.softhsm
async def test_signing_key_in_a_pkcs11_token(tmp_path: Path, aiohttp_client: Any,
                                             tmp_path_factory: pytest.TempPathFactory) -> None:
    token = session_token(tmp_path_factory)
    async with fresh_services(tmp_path, VCC_PKI_KEY_BACKEND="pkcs11",
                              VCC_PKI_PKCS11_MODULE=token.module_path,
                              VCC_PKI_PKCS11_TOKEN_LABEL=token.label,
                              VCC_PKI_PKCS11_PIN=token.pin) as services:
        client = await _client(services, aiohttp_client)
        status, signed = await _sign(client, await _token(services), algorithm="sha512")
        assert status == 201, signed
        record = (await services.store.list_code_signers(
            (await services.authority.organization("default")).org_id))[0]
        assert record.key_backend == "pkcs11"
        artifact, p7s, root = _files(tmp_path, services, base64.b64decode(signed["signature"]))
        verified = _openssl("cms", "-verify", "-binary", "-content", str(artifact), "-inform",
                            "DER", "-in", str(p7s), "-CAfile", str(root), "-purpose", "any",
                            "-out", "/dev/null")
        assert "Verification successful" in verified.stderr, verified.stderr


def test_cli_signer_ensure_is_idempotent_and_verify_reads_pem(
        env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["init"]) == 0
    capsys.readouterr()
    assert cli.main(["signer", "ensure"]) == 0
    assert "code-signing certificate of default created" in capsys.readouterr().out
    assert cli.main(["signer", "ensure", "--org", "default"]) == 0
    assert "already valid" in capsys.readouterr().out
    assert cli.main(["signer", "ensure", "--org", "nope"]) == 1
    assert "no organization 'nope'" in capsys.readouterr().err

    # verify: a PEM signature is read too; no root where it is looked for is an error.
    monkeypatch.delenv("VCC_PKI_CA_BUNDLE", raising=False)
    artifact = tmp_path / "ui.tar"
    artifact.write_bytes(b"bundle")
    pem = tmp_path / "ui.tar.p7s"
    pem.write_text("-----BEGIN CMS-----\n" + base64.encodebytes(b"0\x03\x02\x01\x01").decode()
                   + "-----END CMS-----\n")
    assert cli.main(["verify", str(artifact), str(pem)]) == 1
    assert "NOT valid" in capsys.readouterr().out
    monkeypatch.setenv("VCC_PKI_CA_BUNDLE", str(tmp_path / "missing.pem"))
    assert cli.main(["verify", str(artifact), str(pem)]) == 1
    assert "no trusted root" in capsys.readouterr().err
    # sign: without a token nothing is asked
    monkeypatch.delenv("VCC_PKI_TOKEN", raising=False)
    assert cli.main(["sign", str(artifact), "--type", "ui_bundle"]) == 1
    assert "VCC_PKI_TOKEN" in capsys.readouterr().err


@pytest.mark.postgres
async def test_sign_and_verify_on_postgresql(tmp_path: Path, aiohttp_client: Any) -> None:
    from tests.pg import create_throwaway_database, drop_database, require_postgres

    require_postgres()
    dsn = await create_throwaway_database()
    try:
        async with fresh_services(tmp_path, VCC_PKI_DATABASE_URL=dsn) as services:
            client = await _client(services, aiohttp_client)
            auth = await _token(services)
            status, signed = await _sign(client, auth, metadata={"modell": "clara-ü", "n": 1})
            assert status == 201, signed
            status, verdict = await _verify(client, auth, signed["signature"], ARTIFACT)
            assert status == 200 and verdict["status"] == "valid"
            assert verdict["verified_count"] == 1
            record = await services.store.get_code_signature(signed["id"])
            assert record is not None and record.metadata == {"modell": "clara-ü", "n": 1}
    finally:
        await drop_database(dsn)


async def test_signatures_are_served_on_the_est_listener_too(
        services: Services, aiohttp_client: Any) -> None:
    """The REST API is on the EST port as well (for mTLS service accounts): the signature
    routes work there as on 8443 (they were a 500 before: the app lacked the service)."""
    import hashlib

    from gateway.app import build_est_app

    client = await aiohttp_client(build_est_app(services, services.est, services.est.settings))
    token = (await services.authority.create_token(
        "default", "code_signer", principal=Principal.system("test"))).token
    unauthenticated = await client.post("/api/v1/signatures", json={})
    assert unauthenticated.status == 401
    signed = await client.post("/api/v1/signatures", headers={
        "Authorization": f"Bearer {token}"}, json={
        "hash": hashlib.sha256(b"artifact").hexdigest(), "hash_algorithm": "sha256",
        "artifact_type": "helm_chart", "name": "chart.tgz"})
    assert signed.status == 201, await signed.text()
