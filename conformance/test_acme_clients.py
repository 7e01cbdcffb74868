"""ACME with real clients against `vcc-pki serve` started the normal way: certbot, lego and
dehydrated (conformance/acme/*.sh). The gateway validates against the ports the clients
listen on, and resolves every name through the test DNS server (conformance/testdns.py),
which answers 127.0.0.1 and serves the dns-01 TXT records lego's exec hook writes."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from conformance.gateway import BIN, Gateway, assert_clean_log, free_port, running_gateway

HERE = Path(__file__).parent / "acme"


@dataclass
class AcmeSetup:
    gateway: Gateway
    env: dict[str, str]


@pytest.fixture
def acme(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[AcmeSetup]:
    """A gateway for the ACME clients; ``request.param`` (indirect) adds VCC_PKI_* settings
    (several workers, PostgreSQL)."""
    extra: dict[str, str] = dict(getattr(request, "param", None) or {})
    dsn = ""
    if extra.pop("database", "") == "postgres":
        from tests.pg import create_throwaway_database, require_postgres

        require_postgres()
        dsn = asyncio.run(create_throwaway_database())
        extra["VCC_PKI_DATABASE_URL"] = dsn
    try:
        yield from _acme(tmp_path, extra)
    finally:
        if dsn:
            from tests.pg import drop_database

            asyncio.run(drop_database(dsn))


def _acme(tmp_path: Path, extra: dict[str, str]) -> Iterator[AcmeSetup]:
    dns_port, http01, tlsalpn01 = free_port(socket.SOCK_DGRAM), free_port(), free_port()
    txt = tmp_path / "txt"
    txt.mkdir()
    dns = subprocess.Popen([sys.executable, "-m", "conformance.testdns", "--port",
                            str(dns_port), "--records", str(txt)],
                           cwd=Path(__file__).parent.parent)
    try:
        env = {"VCC_PKI_KEY_PASSPHRASE": "conformance",
               "VCC_PKI_ACME_HTTP01_PORT": str(http01),
               "VCC_PKI_ACME_TLSALPN01_PORT": str(tlsalpn01),
               "VCC_PKI_ACME_DNS_RESOLVER": f"127.0.0.1:{dns_port}", **extra}
        with running_gateway(tmp_path / "data", env) as gateway:
            https_port = gateway.https_url.rsplit(":", 1)[1]
            yield AcmeSetup(gateway, {
                **gateway.env,
                "DIRECTORY_URL": f"https://127.0.0.1:{https_port}/acme/directory",
                "ROOT_CA": str(tmp_path / "data" / "ca" / "root.pem"),
                "HTTP01_PORT": str(http01), "TLSALPN01_PORT": str(tlsalpn01),
                "DNS_PORT": str(dns_port), "TXT_DIR": str(txt),
                "VCC_PKI_BIN": str(BIN), "WORK": str(tmp_path / "work"),
            })
        assert_clean_log(tmp_path / "data")
    finally:
        dns.terminate()
        dns.wait(10)


def require_client(client: str) -> None:
    """Skip without the client; in CI (CI=true) a test that cannot run is a failure, as
    for PostgreSQL, Redis and SoftHSM2, so a missing client cannot leave CI green."""
    if shutil.which(client) is not None:
        return
    message = f"{client} is not installed (make system-deps)"
    if os.environ.get("CI") == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def _run(client: str, setup: AcmeSetup) -> None:
    require_client(client)
    started = time.monotonic()
    result = subprocess.run(["bash", str(HERE / f"{client}.sh")], env=setup.env,
                            capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, f"{result.stdout[-6000:]}\n{result.stderr[-6000:]}"
    assert result.stdout.rstrip().endswith("OK")
    print(f"{client}: {time.monotonic() - started:.1f} s")


@pytest.mark.timeout(600)
def test_certbot(acme: AcmeSetup) -> None:
    _run("certbot", acme)


@pytest.mark.timeout(600)
def test_lego(acme: AcmeSetup) -> None:
    _run("lego", acme)


@pytest.mark.timeout(600)
def test_dehydrated(acme: AcmeSetup) -> None:
    _run("dehydrated", acme)


def test_a_missing_client_skips_here_and_fails_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="certbot is not installed"):
        require_client("certbot")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="certbot is not installed"):
        require_client("certbot")


# Two serving processes share the ports (SO_REUSEPORT): each connection a client opens may
# land on either, so nonces, accounts, orders and challenges must hold across processes
# through the store alone (no Redis here), on SQLite and on PostgreSQL.
@pytest.mark.timeout(600)
@pytest.mark.parametrize("acme", [{"VCC_PKI_WORKERS": "2"}], indirect=True,
                         ids=["sqlite-2-workers"])
def test_certbot_on_two_workers(acme: AcmeSetup) -> None:
    _run("certbot", acme)
    # certbot retries a badNonce once by itself, so passing alone would not show that nonces
    # hold across the processes: its debug logs (every response) must hold none.
    logs = list(Path(acme.env["WORK"]).glob("certbot-*/logs/letsencrypt.log*"))
    assert logs, "certbot wrote no log"
    responses = "".join(log.read_text(errors="replace") for log in logs)
    assert "Received response" in responses
    assert "badNonce" not in responses


@pytest.mark.postgres
@pytest.mark.timeout(600)
@pytest.mark.parametrize("acme", [{"VCC_PKI_WORKERS": "2", "database": "postgres"}],
                         indirect=True, ids=["postgres-2-workers"])
def test_lego_on_two_workers(acme: AcmeSetup) -> None:
    _run("lego", acme)
