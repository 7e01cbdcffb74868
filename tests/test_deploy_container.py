"""deploy/container (issue 15). The image cannot be built here (no registry), so: the
Containerfile is checked for what it promises (Debian slim, the install steps of `make`,
every package of the project, a non-root user), and its entrypoint script is run directly
with a fake `vcc-pki` (and a fake `id`) on PATH. conformance/test_deploy_entrypoint.py runs
it with the real gateway."""

from __future__ import annotations

import os
import re
import subprocess
import tomllib
from pathlib import Path

import pytest

from tests.deploytools import DEPLOY

CONTAINER = DEPLOY / "container"
ENTRYPOINT = CONTAINER / "entrypoint.sh"
ROOT = DEPLOY.parent

FAKE_VCC_PKI = """#!/bin/sh
# records each call: its pid, its arguments, the data directory it was given
echo "$$ $* | $VCC_PKI_DATA_DIR" >> "$CALLS"
if [ "$1" = init ]; then /bin/mkdir -p "$VCC_PKI_DATA_DIR" && : > "$VCC_PKI_DATA_DIR/vcc-pki.db"; fi
if [ "$1" = fail ]; then exit 3; fi
exit 0
"""


def _fake_bin(tmp_path: Path, uid: int) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, text in (("vcc-pki", FAKE_VCC_PKI),
                       ("id", f'#!/bin/sh\n[ "$1" = -u ] && echo {uid}\n')):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return bin_dir


def run_entrypoint(tmp_path: Path, *args: str, uid: int = 10001,
                   **env: str) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """Run the entrypoint under /bin/sh (dash on Debian, as in the image) with only the fake
    tools on PATH; the calls the fake vcc-pki saw."""
    calls = tmp_path / "calls"
    calls.unlink(missing_ok=True)
    process = subprocess.Popen(
        ["/bin/sh", str(ENTRYPOINT), *args],
        env={"PATH": str(_fake_bin(tmp_path, uid)), "CALLS": str(calls), **env},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stdout, stderr = process.communicate(timeout=30)
    result = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    lines = calls.read_text().splitlines() if calls.exists() else []
    # "exec": the last command runs as the entrypoint's own process (PID 1 in a container)
    if lines and process.returncode == 0:
        assert lines[-1].split(" ", 1)[0] == str(process.pid), lines
    return result, [line.split(" ", 1)[1] for line in lines]


def test_empty_data_dir_is_initialised_then_served(tmp_path: Path) -> None:
    data = tmp_path / "data"
    result, calls = run_entrypoint(tmp_path, VCC_PKI_DATA_DIR=str(data))
    assert result.returncode == 0, result.stderr
    assert calls == [f"init | {data}", f"serve | {data}"]
    assert "is empty: vcc-pki init" in result.stderr
    # the next start finds the data directory filled: serve only, with its arguments
    result, calls = run_entrypoint(tmp_path, "serve", "--workers", "2",
                                   VCC_PKI_DATA_DIR=str(data))
    assert result.returncode == 0, result.stderr
    assert calls == [f"serve --workers 2 | {data}"]


def test_a_new_volume_with_lost_found_counts_as_empty(tmp_path: Path) -> None:
    data = tmp_path / "volume"
    (data / "lost+found").mkdir(parents=True)
    _, calls = run_entrypoint(tmp_path, VCC_PKI_DATA_DIR=str(data))
    assert calls == [f"init | {data}", f"serve | {data}"]


def test_a_hidden_file_counts_as_content(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / ".passphrase").write_text("x")
    _, calls = run_entrypoint(tmp_path, VCC_PKI_DATA_DIR=str(data))
    assert calls == [f"serve | {data}"]


def test_default_data_dir(tmp_path: Path) -> None:
    _, calls = run_entrypoint(tmp_path, "ca", "list", VCC_PKI_ENTRYPOINT_INIT="never")
    assert calls == ["ca list | /var/lib/vcc-pki"]


@pytest.mark.parametrize(("mode", "expected"), [("always", ["init", "serve"]),
                                                ("never", ["serve"])])
def test_init_modes(tmp_path: Path, mode: str, expected: list[str]) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "vcc-pki.db").write_text("")
    result, calls = run_entrypoint(tmp_path, VCC_PKI_DATA_DIR=str(data),
                                   VCC_PKI_ENTRYPOINT_INIT=mode)
    assert result.returncode == 0, result.stderr
    assert [c.split(" ", 1)[0] for c in calls] == expected


def test_other_commands_pass_through_without_init(tmp_path: Path) -> None:
    data = tmp_path / "empty"
    result, calls = run_entrypoint(tmp_path, "backup", "--out", "/backup/x.tar",
                                   VCC_PKI_DATA_DIR=str(data))
    assert result.returncode == 0
    assert calls == [f"backup --out /backup/x.tar | {data}"]


def test_failures_are_exit_codes(tmp_path: Path) -> None:
    result, _ = run_entrypoint(tmp_path, "fail")
    assert result.returncode == 3
    result, calls = run_entrypoint(tmp_path, VCC_PKI_ENTRYPOINT_INIT="sometimes")
    assert result.returncode == 64 and calls == []
    assert "auto, always or never" in result.stderr


def test_refuses_root_unless_allowed(tmp_path: Path) -> None:
    result, calls = run_entrypoint(tmp_path, "ca", "list", uid=0)
    assert result.returncode == 64 and calls == []
    assert "refusing to run as root" in result.stderr
    result, calls = run_entrypoint(tmp_path, "ca", "list", uid=0, VCC_PKI_ALLOW_ROOT="1")
    assert result.returncode == 0 and len(calls) == 1


def test_containerfile() -> None:
    text = (CONTAINER / "Containerfile").read_text()
    stages = re.findall(r"^FROM (\S+)", text, re.M)
    assert stages and all(re.fullmatch(r"debian:[a-z]+-slim", s) for s in stages), stages
    # the install steps of `make` (Makefile $(STAMP)): venv, pip upgraded, pip install
    makefile = (ROOT / "Makefile").read_text()
    for step in ("-m venv", "pip install --quiet --upgrade pip", "pip install --quiet"):
        assert step in makefile and step in text, step
    # every package the project installs is copied into the build
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = {p.rstrip("*") for p in project["tool"]["setuptools"]["packages"]["find"][
        "include"]}
    copied = set(re.findall(r"^COPY (\w+) \1$", text, re.M))
    assert packages == copied, packages ^ copied
    # the user it runs as: created, not root, and the one Kubernetes expects
    user = re.findall(r"^USER (\S+)", text, re.M)
    assert user == ["10001:10001"]
    assert "useradd --system --uid 10001" in text
    assert re.search(r"^ENTRYPOINT \[\"/usr/local/bin/vcc-pki-entrypoint\"\]", text, re.M)
    assert "COPY deploy/container/entrypoint.sh /usr/local/bin/vcc-pki-entrypoint" in text
    assert os.access(ENTRYPOINT, os.X_OK)
