"""The container entrypoint (deploy/container/entrypoint.sh) with the real `vcc-pki` of this
virtualenv: on an empty data directory it initialises the PKI, the gateway it execs
becomes ready, and SIGTERM to the entrypoint's process stops the gateway cleanly (the exec
made them one process). The image itself cannot be built here (no registry)."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from conformance.gateway import BIN, _wait_ready, free_port
from tests.deploytools import DEPLOY


def test_entrypoint_initialises_and_serves(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "lost+found").mkdir()  # a fresh volume
    fake = tmp_path / "bin"
    fake.mkdir()
    # not root, as in the image (the sandbox may run tests as root)
    (fake / "id").write_text('#!/bin/sh\n[ "$1" = -u ] && echo 10001\n')
    (fake / "id").chmod(0o755)
    http_port = free_port()
    env = {**os.environ,
           "PATH": f"{fake}{os.pathsep}{BIN.parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "VCC_PKI_DATA_DIR": str(data), "VCC_PKI_HTTP_PORT": str(http_port),
           "VCC_PKI_HTTPS_PORT": str(free_port()), "VCC_PKI_EST_PORT": str(free_port())}
    env.pop("VCC_PKI_BIN", None)
    log = tmp_path / "entrypoint.log"
    with log.open("wb") as out:
        process = subprocess.Popen(["/bin/sh", str(DEPLOY / "container" / "entrypoint.sh")],
                                   env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            _wait_ready(f"http://127.0.0.1:{http_port}/ready", process, timeout=300)
            assert (data / "tls" / "server.pem").exists()
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=60) == 0, log.read_text()
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    text = log.read_text()
    assert "is empty: vcc-pki init" in text
    assert "created root CA" in text, text
    assert "Traceback" not in text, text
