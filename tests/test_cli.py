"""The vcc-pki command line: init is idempotent, audit verify catches tampering."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from gateway import runtime
from gateway.cli import main
from gateway.config import ConfigError, cores, load_config
from tests.helpers import fail_certificate_writes, make_csr


def test_init_issue_revoke_and_audit(env: Path, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["init"]) == 0
    assert "created root CA root" in capsys.readouterr().out
    assert (env / "passphrase").stat().st_mode & 0o777 == 0o600
    assert main(["init"]) == 0
    assert "already present" in capsys.readouterr().out

    assert main(["ca", "list"]) == 0
    listing = capsys.readouterr().out
    assert "default-issuing" in listing and "intermediate" in listing
    assert main(["ca", "export", "root"]) == 0
    assert capsys.readouterr().out.startswith("-----BEGIN CERTIFICATE-----")

    csr = tmp_path / "svc.csr"
    csr.write_bytes(make_csr())
    assert main(["issue", "--csr", str(csr), "--profile", "vcc_service",
                 "--out", str(tmp_path / "svc.pem")]) == 0
    serial = capsys.readouterr().err.split()[1]
    assert main(["revoke", serial, "--reason", "superseded"]) == 0
    assert main(["revoke", serial, "--reason", "superseded"]) == 1  # already revoked
    assert main(["token", "create", "--org", "default", "--role", "auditor"]) == 0
    assert capsys.readouterr().out.startswith("revoked")
    assert main(["org", "create", "health", "--name", "Health"]) == 0
    assert main(["audit", "verify"]) == 0
    assert "audit log intact" in capsys.readouterr().out


@pytest.mark.parametrize("tamper", [
    "UPDATE audit_log SET event_data = '{\"serial\": \"1\"}' WHERE seq = 2",
    "DELETE FROM audit_log WHERE seq = 2",
    "UPDATE audit_log SET seq = -1 WHERE seq = 2; UPDATE audit_log SET seq = 2 WHERE seq = 3;"
    " UPDATE audit_log SET seq = 3 WHERE seq = -1",
    "DELETE FROM audit_log WHERE seq = (SELECT MAX(seq) FROM audit_log)",
    "UPDATE audit_log SET actor_id = 'mallory' WHERE seq = 2",
    "UPDATE audit_log SET timestamp = '2000-01-01T00:00:00.000000Z' WHERE seq = 2",
], ids=["changed", "deleted", "reordered", "tail-deleted", "actor-changed", "time-changed"])
@pytest.mark.tampers_audit
def test_audit_verify_detects_tampering(env: Path, tamper: str,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["init"]) == 0
    with sqlite3.connect(env / "vcc-pki.db") as conn:
        conn.executescript(tamper)
    capsys.readouterr()
    assert main(["audit", "verify"]) == 1
    assert "BROKEN" in capsys.readouterr().out


def test_errors_are_one_line(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["init"]) == 0
    assert main(["revoke", "0123", "--reason", "superseded"]) == 1
    assert capsys.readouterr().err.startswith("error: no certificate")


def test_cores_are_capped_by_the_cgroup_cpu_quota(tmp_path: Path) -> None:
    """auto: a Kubernetes CPU limit is a cgroup quota, not an affinity mask (issue 18)."""
    import os

    affinity = len(os.sched_getaffinity(0))
    assert cores(tmp_path) == affinity  # no quota files: the affinity
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cores(tmp_path) == affinity
    (tmp_path / "cpu.max").write_text("50000 100000\n")  # half a CPU: one worker
    assert cores(tmp_path) == 1
    (tmp_path / "cpu.max").write_text("150000 100000\n")  # 1.5 CPUs: rounded up
    assert cores(tmp_path) == min(affinity, 2)
    (tmp_path / "cpu.max").unlink()
    (tmp_path / "cpu").mkdir()  # cgroup v1
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("100000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cores(tmp_path) == 1
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert cores(tmp_path) == affinity


def test_config_file_and_environment(tmp_path: Path) -> None:
    config_file = tmp_path / "vcc.toml"
    config_file.write_text(
        'data_dir = "/srv/pki"\nhttp_port = 9080\n[pkcs11]\ntoken_label = "prod"\n'
        '[ca]\nissuing_key_type = "rsa-3072"\n'
    )
    config = load_config({"VCC_PKI_CONFIG": str(config_file), "VCC_PKI_HTTP_PORT": "7080"})
    assert config.data_dir == Path("/srv/pki") and config.http_port == 7080
    assert config.pkcs11_token_label == "prod"
    assert str(config.ca_settings().issuing_key) == "rsa-3072"
    assert config.effective_database_url == "sqlite:////srv/pki/vcc-pki.db"
    assert config.effective_public_http_url == "http://127.0.0.1:7080"
    with pytest.raises(ConfigError):
        load_config({"VCC_PKI_KEY_BACKEND": "magic"})
    with pytest.raises(ConfigError):
        load_config({"VCC_PKI_HTTP_PORT": "eighty"})
    with pytest.raises(ConfigError):
        load_config({"VCC_PKI_ISSUING_KEY_TYPE": "dsa-1024"})
    assert load_config({}).event_loop == "auto"
    with pytest.raises(ConfigError):
        load_config({"VCC_PKI_EVENT_LOOP": "trio"})
    with pytest.raises(ConfigError):
        load_config({"VCC_PKI_CRL_PARTITIONS": "100000"})
    # Unset: one per core, with Redis or without (nonces routed between the workers,
    # sessions in the database).
    assert load_config({}).workers == min(cores(), 256)
    assert load_config({"VCC_PKI_REDIS_URL": "redis://127.0.0.1:6379/0"}).workers == cores()
    assert load_config({"VCC_PKI_REDIS_URL": "redis://127.0.0.1:6379/0",
                        "VCC_PKI_WORKERS": "1"}).workers == 1
    assert load_config({"VCC_PKI_WORKERS": "auto"}).workers == cores() >= 1
    assert load_config({"VCC_PKI_WORKERS": " AUTO "}).workers == cores()
    for bad in ("0", "-2", "257", "many"):
        with pytest.raises(ConfigError, match=r"(?i)workers"):
            load_config({"VCC_PKI_WORKERS": bad})


def test_file_errors_are_one_line_and_issue_nothing(
        env: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["init"]) == 0
    csr = tmp_path / "svc.csr"
    csr.write_bytes(make_csr())
    capsys.readouterr()
    database = env / "vcc-pki.db"

    def certificates() -> int:
        import sqlite3

        with sqlite3.connect(database) as conn:
            count: int = conn.execute("SELECT COUNT(*) FROM certificates").fetchone()[0]
        return count

    before = certificates()
    for argv in (["issue", "--csr", str(tmp_path / "missing.csr")],
                 ["issue", "--csr", str(tmp_path)],
                 ["issue", "--csr", str(csr), "--out", str(tmp_path / "no" / "dir.pem")],
                 ["ca", "add-cross", "intermediate", str(tmp_path / "missing.pem")]):
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert certificates() == before  # the unwritable --out failed before issuing

    # an existing --out survives a failed issue and is replaced by a good one
    out = tmp_path / "svc.pem"
    out.write_text("previous\n")
    bad = tmp_path / "bad.csr"
    bad.write_bytes(b"not a csr")
    assert main(["issue", "--csr", str(bad), "--out", str(out)]) == 1
    assert out.read_text() == "previous\n"
    assert main(["issue", "--csr", str(csr), "--out", str(out)]) == 0
    assert out.read_text().startswith("-----BEGIN CERTIFICATE-----")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".svc.pem")] == []


def test_certificate_write_failing_is_an_error_and_no_certificate(
        env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Recorded before returned (DESIGN.md): `vcc-pki issue` whose certificate write fails
    (the rest of the store works) prints one error line, exits non-zero, and writes no
    certificate, neither to stdout nor to --out."""
    assert main(["init"]) == 0
    csr = tmp_path / "svc.csr"
    csr.write_bytes(make_csr())
    attempts: list[object] = []
    opened = runtime.make_store

    def failing_store(config: object) -> object:
        store = opened(config)  # type: ignore[arg-type]
        attempts.append(fail_certificate_writes(monkeypatch, store))
        return store

    monkeypatch.setattr(runtime, "make_store", failing_store)
    out = tmp_path / "svc.pem"
    for argv in (["issue", "--csr", str(csr)], ["issue", "--csr", str(csr), "--out", str(out)]):
        capsys.readouterr()
        assert main(argv) == 1
        captured = capsys.readouterr()
        assert captured.out == ""
        assert captured.err == "error: the certificate store is not available\n"
    assert [len(a) for a in attempts] == [1, 1]  # type: ignore[arg-type]
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".svc.pem")] == []


@pytest.mark.postgres
def test_concurrent_inits_on_one_database_make_one_hierarchy(tmp_path: Path) -> None:
    """Replicas started together on an empty database (issue 15's ha-postgres overlay): the
    init lease lets one create the hierarchy; the others wait and find it. One root CA,
    every init exits 0. (Replicas share the keys: a PKCS#11 token, or as here, software
    keys on one volume.)"""
    import asyncio
    import subprocess
    import sys

    import asyncpg

    from tests.pg import create_throwaway_database, drop_database, require_postgres

    require_postgres()
    dsn = asyncio.run(create_throwaway_database())
    try:
        processes = []
        for _replica in range(3):
            env = {"PATH": "/usr/bin:/bin", "VCC_PKI_DATA_DIR": str(tmp_path / "shared"),
                   "VCC_PKI_DATABASE_URL": dsn, "VCC_PKI_KEY_PASSPHRASE": "shared",
                   "VCC_PKI_ROOT_KEY_TYPE": "ec-p256",
                   "VCC_PKI_INTERMEDIATE_KEY_TYPE": "ec-p256"}
            processes.append(subprocess.Popen(
                [sys.executable, "-m", "gateway.cli", "init"], env=env,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        results = []
        for process in processes:
            out, err = process.communicate(timeout=120)
            results.append((process.returncode, out, err))
        assert all(code == 0 for code, _, _ in results), results
        assert sum("created root CA" in out for _, out, _ in results) == 1, results

        async def roots() -> int:
            conn = await asyncpg.connect(dsn)
            try:
                return int(await conn.fetchval(
                    "SELECT count(*) FROM certificate_authorities WHERE ca_type = 'root'"))
            finally:
                await conn.close()
        assert asyncio.run(roots()) == 1
    finally:
        asyncio.run(drop_database(dsn))
