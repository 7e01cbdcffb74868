"""SIGTERM in the order a load balancer needs (issue 15), against `vcc-pki serve` started
the normal way with two worker processes and VCC_PKI_DRAIN_SECONDS: /ready turns 503 at
once while every request is still served (health, OCSP, REST issuance), then the listeners
stop accepting, the process exits 0, and the background jobs' leases are released (none
is left in the store)."""

from __future__ import annotations

import json
import signal
import sqlite3
import time
import urllib.error
import urllib.request
from pathlib import Path

from conformance.gateway import running_gateway

DRAIN = 4


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0  # refused: no longer accepting


def test_sigterm_drains_then_stops(tmp_path: Path) -> None:
    env = {"VCC_PKI_KEY_PASSPHRASE": "conformance", "VCC_PKI_WORKERS": "2",
           "VCC_PKI_DRAIN_SECONDS": str(DRAIN)}
    with running_gateway(tmp_path / "data", env) as gateway:
        ready, health = f"{gateway.http_url}/ready", f"{gateway.http_url}/health"
        assert _status(ready) == 200
        gateway.process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        # The signal reaches the primary's loop, and the primary passes it to the worker,
        # a moment later: poll until ten /ready answers in a row are 503 (the kernel spreads
        # connections over both processes).
        in_a_row = 0
        while in_a_row < 10:
            assert time.monotonic() - signalled < DRAIN - 1, "no 503 from /ready"
            in_a_row = in_a_row + 1 if _status(ready) == 503 else 0
        seen: dict[str, int] = {}
        # Draining: /ready 503 from every process, /health and real work still 200 until
        # the drain ends.
        while time.monotonic() - signalled < DRAIN - 1:
            for url in (ready, health, f"{gateway.http_url}/ca/root.pem"):
                key = f"{url.rsplit('/', 1)[1]} {_status(url)}"
                seen[key] = seen.get(key, 0) + 1
        assert set(seen) == {"ready 503", "health 200", "root.pem 200"}, seen
        assert gateway.process.wait(timeout=DRAIN + 30) == 0
        stopped = time.monotonic() - signalled
        assert _status(health) == 0  # nothing accepts any more
        print(f"\nSIGTERM: {json.dumps(seen)} during the drain; exited after {stopped:.1f} s")
    log = (tmp_path / "data" / "serve.log").read_text()
    assert "draining: /ready answers 503" in log and "Traceback" not in log
    with sqlite3.connect(tmp_path / "data" / "vcc-pki.db") as conn:
        leases = conn.execute("SELECT name, holder FROM job_locks").fetchall()
    # the hourly audit check keeps its lease on purpose (once an hour across replicas)
    assert [name for name, _ in leases if name != "audit-verify"] == [], leases
