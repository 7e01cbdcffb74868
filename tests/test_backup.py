"""``vcc-pki backup`` and ``vcc-pki restore`` (issue 15): round trips SQLite -> SQLite,
PostgreSQL -> PostgreSQL and across dialects; every certificate, revocation and audit row
comes back, the audit chain verifies, and the restored PKI signs OCSP responses and CRLs
with the original keys. Refusals: a changed archive, a target with data, a newer schema.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import tarfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp

from ca_core.authority import IssuanceRequest
from ca_core.hierarchy import ensure_hierarchy, ensure_organization
from ca_core.principal import Principal
from db import backup as dump_io
from db.sqlite import SqliteStore
from gateway import backup_cli
from gateway.cli import main
from gateway.config import Config, load_config
from gateway.runtime import open_services
from protocols.ocsp.codec import decode_request
from tests.helpers import make_csr
from tests.pg import create_throwaway_database, drop_database, require_postgres
from tests.softhsm import session_token

SYSTEM = Principal.system("test")
PASSPHRASE = "backup-test-passphrase"


def _environment(data_dir: Path, database_url: str | None) -> dict[str, str]:
    env = {"VCC_PKI_DATA_DIR": str(data_dir), "VCC_PKI_KEY_PASSPHRASE": PASSPHRASE,
           "VCC_PKI_ROOT_KEY_TYPE": "ec-p256", "VCC_PKI_INTERMEDIATE_KEY_TYPE": "ec-p256"}
    if database_url:
        env["VCC_PKI_DATABASE_URL"] = database_url
    return env


@dataclass
class Instance:
    """One PKI: where its data lives, its configuration (as the CLI reads it)."""

    env: dict[str, str]

    @property
    def config(self) -> Config:
        return load_config(environ=self.env)

    def use(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Make the CLI (main) see this instance."""
        for name in ("VCC_PKI_CONFIG", "VCC_PKI_DATABASE_URL", "VCC_PKI_KEY_BACKEND",
                     "VCC_PKI_WORKERS", "VCC_PKI_KEY_PASSPHRASE_FILE"):
            monkeypatch.delenv(name, raising=False)
        for name, value in self.env.items():
            monkeypatch.setenv(name, value)


@dataclass
class Populated:
    revoked_serials: set[str]
    issued_serials: set[str]


async def populate(instance: Instance) -> Populated:
    """A PKI with what a backup must carry: CAs of two organizations, certificates, two
    revocations, CRLs, OCSP responders, a token, audit entries."""
    config = instance.config
    async with open_services(config, create=True) as services:
        await ensure_hierarchy(services.authority, config.tsa_settings())
        await services.authority.load()
        await ensure_organization(services.authority, "health", "Health")
        await services.ocsp.load(create=True)
        issued = set()
        revoked = set()
        for n, org in enumerate(("default", "default", "health", "health", "default")):
            cert = await services.authority.issue(IssuanceRequest(
                csr=make_csr(f"svc{n}.example.test", (f"svc{n}.example.test",)),
                profile="vcc_service", org=org), SYSTEM)
            issued.add(cert.record.serial_hex)
            if n in (1, 2):
                await services.authority.revoke(cert.record.serial_hex, "key_compromise",
                                                SYSTEM)
                revoked.add(cert.record.serial_hex)
        await services.ocsp.load(create=True)
        await services.crls.publish_all()
    return Populated(revoked, issued)


async def rows_of(url: str, table: str, columns: tuple[str, ...]) -> list[tuple[Any, ...]]:
    """Some columns of every row of a table, in a form equal across dialects."""
    async with dump_io.snapshot(url) as snap:
        found = next(t for t in await snap.tables() if t.name == table)
        names = found.column_names()
        kinds = {c.name: c.kind for c in found.columns}
        out = []
        async for batch in snap.rows(found):
            for row in batch:
                values = dict(zip(names, row, strict=True))
                out.append(tuple(dump_io.encode_value(values[c], kinds[c]) for c in columns))
        return sorted(out, key=repr)


async def check_same(source: Instance, target: Instance) -> None:
    """Every certificate, revocation and audit row of ``source`` is in ``target``."""
    src, dst = source.config.effective_database_url, target.config.effective_database_url
    assert await dump_io.count_rows(src) == await dump_io.count_rows(dst)
    for table, columns in {
        "certificates": ("cert_id", "serial_hex", "issuer_ca_id", "status", "revoked_at",
                         "revocation_reason", "certificate_der", "not_after"),
        "crl_entries": ("ca_id", "serial_hex", "cert_id", "revoked_at", "reason",
                        "generation"),
        "audit_log": ("seq", "audit_id", "timestamp", "event_type", "event_data",
                      "previous_hash", "audit_hash"),
        "audit_head": ("seq", "audit_hash"),
        "revocation_state": ("generation",),
        "certificate_authorities": ("ca_id", "name", "key_ref", "certificate_der", "status"),
        "ocsp_responders": ("responder_id", "key_ref", "certificate_der"),
        "crls": ("ca_id", "partition", "crl_number", "crl_der"),
        "api_tokens": ("token_id", "secret_hash", "revoked"),
    }.items():
        before = await rows_of(src, table, columns)
        assert before or table == "api_tokens", table
        if table == "api_tokens":
            before = [(r[0], r[1], bool(r[2])) for r in before]
            after = [(r[0], r[1], bool(r[2])) for r in await rows_of(dst, table, columns)]
        else:
            after = await rows_of(dst, table, columns)
        assert after == before, table


async def check_signing(source: Instance, target: Instance, populated: Populated) -> None:
    """The restored PKI answers OCSP with the original responder key and signs CRLs with
    the original CA keys."""
    src = source.config.effective_database_url
    responders = {r[0]: x509.load_der_x509_certificate(base64.b64decode(r[1]))
                  for r in await rows_of(src, "ocsp_responders", ("ca_id", "certificate_der"))}
    cas = {r[0]: x509.load_der_x509_certificate(base64.b64decode(r[1]))
           for r in await rows_of(src, "certificate_authorities", ("name", "certificate_der"))}
    async with open_services(target.config) as services:
        await services.authority.load()
        await services.ocsp.load()
        revoked = await services.store.find_certificates_by_serial(
            sorted(populated.revoked_serials)[0])
        record = revoked[0]
        issuer = await services.authority.ca_by_id(record.issuer_ca_id)
        certificate = x509.load_der_x509_certificate(record.certificate_der)
        request = ocsp.OCSPRequestBuilder().add_certificate(
            certificate, issuer.certificate, hashes.SHA256()).build().public_bytes(
            serialization.Encoding.DER)
        answer = await services.ocsp.answer(decode_request(request))
        response = ocsp.load_der_ocsp_response(answer.der)
        assert response.certificate_status is ocsp.OCSPCertStatus.REVOKED
        responder = responders[record.issuer_ca_id]
        key = responder.public_key()
        assert isinstance(key, ec.EllipticCurvePublicKey)
        algorithm = response.signature_hash_algorithm
        assert algorithm is not None
        key.verify(response.signature, response.tbs_response_bytes,
                   ec.ECDSA(algorithm))  # raises if not
        published = await services.crls.publish_all(issuer.record.name)
        assert published and published[0].crl_number == 2  # after the original's first
        served = await services.crls.get(issuer.record.name)
        crl = x509.load_der_x509_crl(served.crl_der)
        original = cas[issuer.record.name]
        assert crl.is_signature_valid(original.public_key())  # type: ignore[arg-type]
        assert record.serial_hex in {format(r.serial_number, "x") for r in crl}
        assert issuer.signer.public_key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ) == original.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


async def cli(instance: Instance, monkeypatch: pytest.MonkeyPatch, *argv: str) -> int:
    """The CLI runs its own event loop: on a thread of its own, off the test's loop."""
    instance.use(monkeypatch)
    return await asyncio.to_thread(main, list(argv))


@pytest.fixture
async def pg_urls() -> AsyncIterator[list[str]]:
    """Throwaway PostgreSQL databases the test asks for (appended), dropped afterwards."""
    made: list[str] = []
    yield made
    for url in made:
        await drop_database(url)


async def pg_database(pg_urls: list[str]) -> str:
    require_postgres()
    url = await create_throwaway_database()
    pg_urls.append(url)
    return url


ROUND_TRIPS = [
    ("sqlite", "sqlite"),
    pytest.param("postgresql", "postgresql", marks=pytest.mark.postgres),
    pytest.param("sqlite", "postgresql", marks=pytest.mark.postgres),
    pytest.param("postgresql", "sqlite", marks=pytest.mark.postgres),
]


@pytest.mark.parametrize(("source_db", "target_db"), ROUND_TRIPS)
async def test_round_trip(source_db: str, target_db: str, tmp_path: Path,
                          pg_urls: list[str], monkeypatch: pytest.MonkeyPatch,
                          capsys: pytest.CaptureFixture[str]) -> None:
    source = Instance(_environment(tmp_path / "source", await pg_database(pg_urls)
                                   if source_db == "postgresql" else None))
    target = Instance(_environment(tmp_path / "target", await pg_database(pg_urls)
                                   if target_db == "postgresql" else None))
    populated = await populate(source)
    archive = tmp_path / "pki-backup.tar.gz"
    assert await cli(source, monkeypatch, "backup", "--out", str(archive)) == 0
    out = capsys.readouterr()
    assert f"backup written to {archive}" in out.out

    with tarfile.open(archive) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
        names = tar.getnames()
        key_members = [n for n in names if n.startswith("files/keys/")]
        for name in key_members:  # the key files exactly as on disk: encrypted
            body = tar.extractfile(name).read()  # type: ignore[union-attr]
            assert b"ENCRYPTED PRIVATE KEY" in body
            assert body == (Path(source.env["VCC_PKI_DATA_DIR"]) / "keys"
                            / name.removeprefix("files/keys/")).read_bytes()
        assert not any("passphrase" in n for n in names)
        assert PASSPHRASE not in json.dumps(manifest)
    assert names[0] == "manifest.json"
    assert manifest["source"]["dialect"] == source_db
    assert manifest["source"]["schema_version"] == dump_io.latest_schema_version()
    assert set(manifest["members"]) == set(names) - {"manifest.json"}
    tables = {t["name"]: t["rows"] for t in manifest["tables"]}
    assert tables["crl_entries"] == 2 and "job_locks" not in tables
    assert tables["certificates"] >= 5
    # Not a terminal: one plain line per table, no carriage returns.
    assert f"dumped certificates: {tables['certificates']} rows" in out.err.splitlines()
    assert "\r" not in out.err
    assert manifest["keys"]["pkcs11"] == []

    assert await cli(target, monkeypatch, "restore", str(archive)) == 0
    out = capsys.readouterr()
    assert "audit log intact" in out.out
    await check_same(source, target)
    assert await cli(target, monkeypatch, "audit", "verify") == 0
    assert "chain verified" in capsys.readouterr().out
    await check_signing(source, target, populated)
    # A restored PKI issues on: its audit chain goes on from the restored head.
    async with open_services(target.config) as services:
        await services.authority.load()
        await services.authority.issue(IssuanceRequest(
            csr=make_csr("after.example.test", ("after.example.test",)),
            profile="vcc_service"), SYSTEM)
    assert await cli(target, monkeypatch, "audit", "verify") == 0


async def _backup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Instance, Path]:
    source = Instance(_environment(tmp_path / "source", None))
    await populate(source)
    archive = tmp_path / "pki.tar.gz"
    assert await cli(source, monkeypatch, "backup", "--out", str(archive)) == 0
    return source, archive


def _rewrite(archive: Path, change: dict[str, bytes | None]) -> None:
    """The archive with members replaced (None: removed)."""
    with tarfile.open(archive) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()  # type: ignore[union-attr]
                   if m.isfile()]
    with tarfile.open(archive, "w:gz") as tar:
        for member, body in members:
            if member.name in change:
                replaced = change[member.name]
                if replaced is None:
                    continue
                body = replaced
                member.size = len(body)
            tar.addfile(member, io.BytesIO(body))


def _member(archive: Path, name: str) -> bytes:
    with tarfile.open(archive) as tar:
        return tar.extractfile(name).read()  # type: ignore[union-attr]


@pytest.mark.parametrize("tamper", ["row", "key", "missing", "extra"])
async def test_changed_archive_is_refused(tamper: str, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    _, archive = await _backup(tmp_path, monkeypatch)
    certificates = _member(archive, "data/certificates.jsonl")
    if tamper == "row":
        _rewrite(archive, {"data/certificates.jsonl":
                           certificates.replace(b'"status":"active"', b'"status":"revoked"', 1)})
    elif tamper == "key":
        key = next(n for n in json.loads(_member(archive, "manifest.json"))["members"]
                   if n.startswith("files/keys/"))
        _rewrite(archive, {key: _member(archive, key) + b"\n"})
    elif tamper == "missing":
        _rewrite(archive, {"data/crl_entries.jsonl": None})
    else:
        with tarfile.open(archive) as tar:
            members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]  # type: ignore[union-attr]
        with tarfile.open(archive, "w:gz") as tar:
            for member, body in members:
                tar.addfile(member, io.BytesIO(body))
            extra = tarfile.TarInfo("files/keys/planted.key.pem")
            extra.size = 4
            tar.addfile(extra, io.BytesIO(b"evil"))
    capsys.readouterr()
    target = Instance(_environment(tmp_path / "target", None))
    assert await cli(target, monkeypatch, "restore", str(archive)) == 1
    err = capsys.readouterr().err
    assert "error:" in err and ("SHA-256" in err or "do not match the manifest" in err)
    # Nothing was written: no database, no keys.
    assert not (tmp_path / "target").exists()


async def test_non_empty_target_is_refused_unless_forced(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    source, archive = await _backup(tmp_path, monkeypatch)
    # The target is a PKI of its own: its data directory and database hold data.
    target = Instance(_environment(tmp_path / "target", None))
    await populate(target)
    capsys.readouterr()
    assert await cli(target, monkeypatch, "restore", str(archive)) == 1
    assert "is not empty" in capsys.readouterr().err
    # Only its database (a data directory without keys, a database with rows).
    db_only = Instance(_environment(tmp_path / "db-only", None) | {
        "VCC_PKI_DATABASE_URL": target.config.effective_database_url})
    assert await cli(db_only, monkeypatch, "restore", str(archive)) == 1
    assert "target database is not empty" in capsys.readouterr().err
    assert not (tmp_path / "db-only" / "keys").exists()  # refused before the files
    assert await cli(target, monkeypatch, "restore", "--force", str(archive)) == 0
    await check_same(source, target)


async def test_restore_needs_the_passphrase(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    _, archive = await _backup(tmp_path, monkeypatch)
    target = Instance({k: v for k, v in _environment(tmp_path / "target", None).items()
                       if k != "VCC_PKI_KEY_PASSPHRASE"})
    monkeypatch.delenv("VCC_PKI_KEY_PASSPHRASE")
    capsys.readouterr()
    assert await cli(target, monkeypatch, "restore", str(archive)) == 1
    assert "no key passphrase" in capsys.readouterr().err
    assert not (tmp_path / "target").exists()
    # The operator brings the passphrase file: then it restores.
    (tmp_path / "target").mkdir()
    (tmp_path / "target" / "passphrase").write_text(PASSPHRASE + "\n")
    assert await cli(target, monkeypatch, "restore", str(archive)) == 0


async def test_newer_schema_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    _, archive = await _backup(tmp_path, monkeypatch)
    manifest = json.loads(_member(archive, "manifest.json"))
    manifest["source"]["schema_version"] = dump_io.latest_schema_version() + 1
    _rewrite(archive, {"manifest.json": json.dumps(manifest).encode()})
    capsys.readouterr()
    target = Instance(_environment(tmp_path / "target", None))
    assert await cli(target, monkeypatch, "restore", str(archive)) == 1
    assert "is newer than this vcc-pki's" in capsys.readouterr().err
    assert not (tmp_path / "target").exists()


async def test_older_schema_is_migrated_after_loading(tmp_path: Path) -> None:
    """An archive of schema 14 (before code signing's tables) loads into a database made
    at 14, which is then migrated to the newest schema."""
    older = 14
    path = tmp_path / "old" / "vcc-pki.db"
    store = SqliteStore(path)
    store.dialect.migrate_upto = older
    await store.open()
    await store.close()
    url = f"sqlite:///{path}"
    out = tmp_path / "dump"
    out.mkdir()
    dumped = await dump_io.dump(url, out)
    assert dumped.schema_version == older
    assert "code_signers" not in {t.name for t in dumped.tables}
    target = tmp_path / "new" / "vcc-pki.db"
    target_url = f"sqlite:///{target}"
    fresh = SqliteStore(target)
    fresh.dialect.migrate_upto = older
    await fresh.open()
    await fresh.close()
    plan = dump_io.LoadPlan({t.name: t.path for t in dumped.tables},
                            {t.name: t.rows for t in dumped.tables}, force=False)
    await dump_io.load(target_url, plan)
    migrated = SqliteStore(target)
    await migrated.open()
    await migrated.close()
    assert "code_signers" in await dump_io.count_rows(target_url)


async def test_bad_rows_are_refused_and_roll_back(tmp_path: Path) -> None:
    """A row that the target cannot take (here: a certificate of a CA that is not in the
    archive) rolls the whole load back."""
    source = Instance(_environment(tmp_path / "source", None))
    await populate(source)
    out = tmp_path / "dump"
    out.mkdir()
    dumped = await dump_io.dump(source.config.effective_database_url, out)
    (out / "certificate_authorities.jsonl").write_text("")
    target = tmp_path / "target.db"
    store = SqliteStore(target)
    await store.open()
    await store.close()
    plan = dump_io.LoadPlan({t.name: t.path for t in dumped.tables},
                            {t.name: t.rows for t in dumped.tables}, force=False)
    with pytest.raises(dump_io.BackupError, match="FOREIGN KEY"):
        await dump_io.load(f"sqlite:///{target}", plan)
    counts = await dump_io.count_rows(f"sqlite:///{target}")
    assert counts["organizations"] == 0 and counts["audit_log"] == 0


def test_progress_on_a_terminal_rewrites_one_line() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Tty()
    progress = backup_cli.Progress("dumped", stream)
    progress("certificates", 1000, 2500)
    progress("certificates", 2000, 2500)
    progress("certificates", 2500, 2500)
    assert stream.getvalue().count("\r") == 3 and stream.getvalue().endswith("2500/2500 rows\n")
    plain = io.StringIO()
    progress = backup_cli.Progress("dumped", plain)
    progress("certificates", 1000, 2500)
    progress("certificates", 2500, 2500)
    assert plain.getvalue() == "dumped certificates: 2500 rows\n"


def test_config_secrets_are_taken_out() -> None:
    text = ('data_dir = "/srv/pki"\nkey_passphrase = "hunter2"\n'
            'database_url = "postgresql://pki:s3cret@db/pki"\n[pkcs11]\npin = "1234"\n'
            'token_label = "prod"\n')
    redacted = backup_cli.redact_config(text)
    assert redacted is not None
    assert "hunter2" not in redacted and "s3cret" not in redacted and "1234" not in redacted
    assert 'token_label = "prod"' in redacted and "postgresql://pki:REDACTED@db/pki" in redacted
    # A secret that a line rule cannot take out (an inline table): the file is left out.
    assert backup_cli.redact_config('keys = { passphrase = "hunter2" }\n') is None


async def test_backup_of_no_pki(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                capsys: pytest.CaptureFixture[str]) -> None:
    nothing = Instance(_environment(tmp_path / "none", None))
    assert await cli(nothing, monkeypatch, "backup", "--out", str(tmp_path / "x.tgz")) == 1
    assert "no PKI here" in capsys.readouterr().err
    assert not (tmp_path / "x.tgz").exists()


async def test_not_an_archive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                              capsys: pytest.CaptureFixture[str]) -> None:
    junk = tmp_path / "junk.tgz"
    junk.write_bytes(b"not a tar")
    target = Instance(_environment(tmp_path / "target", None))
    assert await cli(target, monkeypatch, "restore", str(junk)) == 1
    assert "not a readable backup archive" in capsys.readouterr().err
    assert await cli(target, monkeypatch, "restore", str(tmp_path / "absent.tgz")) == 1
    assert "No such file" in capsys.readouterr().err


@pytest.mark.softhsm
async def test_pkcs11_keys_are_referenced_not_copied(
        tmp_path: Path, tmp_path_factory: pytest.TempPathFactory,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    token = session_token(tmp_path_factory)
    hsm = {"VCC_PKI_KEY_BACKEND": "pkcs11", "VCC_PKI_PKCS11_MODULE": token.module_path,
           "VCC_PKI_PKCS11_TOKEN_LABEL": token.label, "VCC_PKI_PKCS11_PIN": token.pin}
    source = Instance(_environment(tmp_path / "source", None) | hsm)
    populated = await populate(source)
    archive = tmp_path / "hsm.tar.gz"
    assert await cli(source, monkeypatch, "backup", "--out", str(archive)) == 0
    assert "PKCS#11 key(s) are referenced, not copied" in capsys.readouterr().out
    manifest = json.loads(_member(archive, "manifest.json"))
    refs = manifest["keys"]["pkcs11"]
    assert {r["table"] for r in refs} >= {"certificate_authorities", "ocsp_responders"}
    assert all(r["key_ref"].startswith("pkcs11:") for r in refs), refs
    assert "token" in manifest["keys"]["pkcs11_note"]
    assert not [n for n in manifest["members"] if n.startswith("files/keys/")]
    # Restored against the same token: a warning names it, and the keys sign.
    target = Instance(_environment(tmp_path / "target", None) | hsm)
    assert await cli(target, monkeypatch, "restore", str(archive)) == 0
    err = capsys.readouterr().err
    assert f"token {token.label!r}" in err and "must hold them" in err
    await check_signing(source, target, populated)


@pytest.mark.parametrize("database", ["sqlite", pytest.param("postgresql",
                                                             marks=pytest.mark.postgres)])
async def test_dump_reads_one_snapshot(database: str, tmp_path: Path,
                                       pg_urls: list[str]) -> None:
    """Writes made while a dump runs are not in it: every table is read in the same
    transaction, so the certificates and the audit chain that records them agree."""
    source = Instance(_environment(tmp_path / "source", await pg_database(pg_urls)
                                   if database == "postgresql" else None))
    await populate(source)
    url = source.config.effective_database_url
    async with dump_io.snapshot(url) as snap, open_services(source.config) as services:
        tables = {t.name: t for t in await snap.tables()}
        before = await snap.count(tables["certificates"])
        await services.authority.load()
        await services.authority.issue(IssuanceRequest(
            csr=make_csr("during.example.test", ("during.example.test",)),
            profile="vcc_service"), SYSTEM)
        assert await snap.count(tables["certificates"]) == before
        heads = [batch async for batch in snap.rows(tables["audit_head"])]
        head = heads[0][0]
        log = [row async for row in snap.rows(tables["audit_log"])]
        assert max(r[0] for batch in log for r in batch) == head[1]
    assert (await dump_io.count_rows(url))["certificates"] == before + 1


async def test_restore_of_an_older_schema_migrates(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """An archive of schema 14 (made before later migrations added tables: code signing,
    the service registry, ...): restore makes the target at 14, loads, then migrates it to
    the newest schema."""
    import re

    from db.migrations import migrations

    source, archive = await _backup(tmp_path, monkeypatch)
    manifest = json.loads(_member(archive, "manifest.json"))
    from db.backup import SKIPPED

    later = tuple(name for version, _, sql in migrations("sqlite") if version > 14
                  for name in re.findall(r"CREATE TABLE (\w+)", sql)
                  if name not in SKIPPED)  # web_sessions (0021): never in an archive
    assert "code_signers" in later
    assert all(t["rows"] == 0 for t in manifest["tables"] if t["name"] in later)
    manifest["source"]["schema_version"] = 14
    manifest["tables"] = [t for t in manifest["tables"] if t["name"] not in later]
    for name in later:
        del manifest["members"][f"data/{name}.jsonl"]
    _rewrite(archive, {"manifest.json": json.dumps(manifest).encode(),
                       **{f"data/{name}.jsonl": None for name in later}})
    capsys.readouterr()
    target = Instance(_environment(tmp_path / "target", None))
    assert await cli(target, monkeypatch, "restore", str(archive)) == 0
    out = capsys.readouterr().out
    assert f"migrated the schema from version 14 to {dump_io.latest_schema_version()}" in out
    assert "audit log intact" in out
    counts = await dump_io.count_rows(target.config.effective_database_url)
    assert counts["code_signers"] == 0
    await check_same(source, target)


@pytest.mark.parametrize("database", ["sqlite", pytest.param("postgresql",
                                                             marks=pytest.mark.postgres)])
@pytest.mark.parametrize("bad", ["wrong-type", "not-json", "unknown-column", "bad-base64"])
async def test_bad_data_with_matching_hashes_is_refused(
        database: str, bad: str, tmp_path: Path, pg_urls: list[str],
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """An archive whose data is wrong but whose manifest was made to match (hashes and
    all): a one-line error, and the target database stays empty."""
    _, archive = await _backup(tmp_path, monkeypatch)
    lines = _member(archive, "data/certificates.jsonl").decode().splitlines()
    row = json.loads(lines[0])
    if bad == "wrong-type":
        row["key_size"] = "big"
        row["subject_dn"] = 7
    elif bad == "unknown-column":
        row["planted"] = "x"
    elif bad == "bad-base64":
        row["certificate_der"] = "***"
    lines[0] = "{not json" if bad == "not-json" else json.dumps(row)
    body = ("\n".join(lines) + "\n").encode()
    manifest = json.loads(_member(archive, "manifest.json"))
    manifest["members"]["data/certificates.jsonl"] = {
        "sha256": hashlib.sha256(body).hexdigest(), "size": len(body)}
    _rewrite(archive, {"data/certificates.jsonl": body,
                       "manifest.json": json.dumps(manifest).encode()})
    capsys.readouterr()
    target = Instance(_environment(tmp_path / "target", await pg_database(pg_urls)
                                   if database == "postgresql" else None))
    assert await cli(target, monkeypatch, "restore", str(archive)) == 1
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "certificates" in errors[0], err
    assert "Traceback" not in err
    counts = await dump_io.count_rows(target.config.effective_database_url)
    assert sum(n for name, n in counts.items() if name not in dump_io.SEEDED) == 0
    assert not (tmp_path / "target" / "keys").exists()
