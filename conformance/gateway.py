"""Start ``vcc-pki init`` + ``vcc-pki serve`` the normal way (subprocesses) for real clients."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent / "vcc-pki"


def _ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range (the ports of outgoing connections
    and of binds to port 0)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A free loopback port for ``kind``; for UDP also free for TCP (a DNS server takes
    both). Chosen at random below the ephemeral range: a port the kernel hands out (a
    bind to port 0, the source port of an outgoing connection) could be taken by another
    test's connection before the server meant for it binds (seen with two pytest workers:
    lego's http-01 server failed with EADDRINUSE)."""
    low = min(_ephemeral_low(), 65536)
    first = 20000 if low > 21000 else 1024
    while True:
        port = first + secrets.randbelow(low - first)
        try:
            for each in ((kind, socket.SOCK_STREAM) if kind != socket.SOCK_STREAM
                         else (kind,)):
                with socket.socket(socket.AF_INET, each) as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return port


@dataclass
class Gateway:
    env: dict[str, str]
    data_dir: Path
    http_url: str
    https_url: str
    est_url: str  # the EST listener (https://localhost:PORT), without /.well-known/est
    process: subprocess.Popen[bytes]

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(BIN), *args], env=self.env, capture_output=True, text=True,
                              check=check, timeout=120)


def _wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    context = ssl.create_default_context()
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"vcc-pki serve exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2, context=context) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.05)  # polling interval, not a fixed wait
    raise TimeoutError(f"{url} not ready after {timeout}s")


@contextmanager
def running_gateway(data_dir: Path, extra_env: dict[str, str] | None = None,
                    serve: Sequence[str] | None = None) -> Iterator[Gateway]:
    """``vcc-pki init`` then ``vcc-pki serve`` (or the ``serve`` command given: a bench's
    variant of the same server) on free ports; stopped on exit."""
    http_port, https_port, est_port = free_port(), free_port(), free_port()
    env = {
        **os.environ,
        "VCC_PKI_DATA_DIR": str(data_dir),
        "VCC_PKI_HTTP_PORT": str(http_port),
        "VCC_PKI_HTTPS_PORT": str(https_port),
        "VCC_PKI_EST_PORT": str(est_port),
        "PATH": f"{BIN.parent}{os.pathsep}{os.environ.get('PATH', '')}",
        # One serving process unless the test asks for more (VCC_PKI_WORKERS unset is one
        # per core): on a shared machine, what a test measures or counts stays in one
        # process; conformance/test_workers.py and the *_two_workers tests ask for two.
        "VCC_PKI_WORKERS": os.environ.get("VCC_PKI_WORKERS") or "1",
        **(extra_env or {}),
    }
    subprocess.run([str(BIN), "init"], env=env, check=True, capture_output=True, timeout=300)
    log = open(data_dir / "serve.log", "wb")
    process = subprocess.Popen(list(serve) if serve else [str(BIN), "serve"], env=env,
                               stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_ready(f"http://127.0.0.1:{http_port}/ready", process)
        yield Gateway(env, data_dir, f"http://127.0.0.1:{http_port}",
                      f"https://localhost:{https_port}", f"https://localhost:{est_port}",
                      process)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        log.close()


def run_script(script: Path, gateway: Gateway, **extra_env: str) -> str:
    """Run a conformance shell script against ``gateway``; it must end by printing OK."""
    result = subprocess.run(
        ["bash", str(script)],
        env={**gateway.env, "HTTP_URL": gateway.http_url, "HTTPS_URL": gateway.https_url,
             "EST_URL": gateway.est_url,
             "VCC_PKI_BIN": str(BIN), **extra_env},
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    assert result.stdout.rstrip().endswith("OK")
    return result.stdout


def assert_clean_log(data_dir: Path) -> None:
    """Bad input is logged as one INFO line at most: no traceback, no ERROR."""
    log = (data_dir / "serve.log").read_text()
    assert "Traceback" not in log and " ERROR " not in log, log


def softhsm_env(token: Any) -> dict[str, str]:
    """The environment that points the gateway at a SoftHSM2 token (tests.softhsm)."""
    return {
        "SOFTHSM2_CONF": str(token.conf_path),
        "VCC_PKI_KEY_BACKEND": "pkcs11",
        "VCC_PKI_PKCS11_MODULE": token.module_path,
        "VCC_PKI_PKCS11_TOKEN_LABEL": token.label,
        "VCC_PKI_PKCS11_PIN": token.pin,
    }


def token_private_keys(token: Any) -> str:
    """``pkcs11-tool --list-objects --type privkey`` of a SoftHSM2 token (tests.softhsm):
    which keys the gateway made there, and their attributes."""
    return subprocess.run(
        ["pkcs11-tool", "--module", token.module_path, "--token-label", token.label,
         "--login", "--pin", token.pin, "--list-objects", "--type", "privkey"],
        env={"SOFTHSM2_CONF": str(token.conf_path)}, capture_output=True, text=True,
        check=True,
    ).stdout
