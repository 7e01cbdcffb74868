"""deploy/systemd (issue 15): the gateway unit and the backup service and timer pass
`systemd-analyze verify` with no warning at all (an unknown key is only a warning there).

verify insists that every Exec binary exists and is executable; /usr/local/bin/vcc-pki is
not installed on a test machine, so the test verifies copies in which that path points at
an executable it creates, and changes nothing else."""

from __future__ import annotations

import configparser
import re
import subprocess
from pathlib import Path

from tests.deploytools import DEPLOY, require_tool

SYSTEMD = DEPLOY / "systemd"
UNITS = ("vcc-pki.service", "vcc-pki-backup.service", "vcc-pki-backup.timer")
INSTALLED = "/usr/local/bin/vcc-pki"


def _copies(tmp_path: Path) -> Path:
    fake = tmp_path / "vcc-pki"
    # records its arguments, so the backup's ExecStart can be run as systemd would
    fake.write_text('#!/bin/sh\necho "$@" > "$(dirname "$0")/args"\n')
    fake.chmod(0o755)
    units = tmp_path / "units"
    units.mkdir()
    for name in UNITS:
        text = (SYSTEMD / name).read_text()
        (units / name).write_text(text.replace(INSTALLED, str(fake)))
    return units


def _verify(units: Path, *names: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([require_tool("systemd-analyze"), "verify", "--man=no", *names],
                          cwd=units, capture_output=True, text=True, timeout=120, check=False)


def test_units_verify_cleanly(tmp_path: Path) -> None:
    units = _copies(tmp_path)
    result = _verify(units, *UNITS)
    assert result.returncode == 0 and result.stdout + result.stderr == "", result.stderr


def test_verify_would_catch_a_mistake(tmp_path: Path) -> None:
    """The check above is not vacuous: a misspelt key is reported."""
    units = _copies(tmp_path)
    path = units / "vcc-pki-backup.service"
    path.write_text(path.read_text().replace("Type=oneshot", "Type=oneshot\nUmask=0077"))
    result = _verify(units, "vcc-pki-backup.service")
    assert "Unknown key" in result.stderr


def _section(name: str, section: str) -> configparser.SectionProxy:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string((SYSTEMD / name).read_text())
    return parser[section]


def test_timer_runs_the_backup(tmp_path: Path) -> None:
    timer = _section("vcc-pki-backup.timer", "Timer")
    assert timer["Unit"] == "vcc-pki-backup.service" and timer["Persistent"] == "true"
    calendar = subprocess.run([require_tool("systemd-analyze"), "calendar",
                               timer["OnCalendar"]], capture_output=True, text=True,
                              check=False, timeout=60)
    assert calendar.returncode == 0 and "Next elapse" in calendar.stdout, calendar.stderr
    service = _section("vcc-pki-backup.service", "Service")
    assert service["Type"] == "oneshot" and service["User"] == "vcc-pki"
    # ExecStart as systemd runs it (%% is a literal %): `vcc-pki backup --out FILE`
    _copies(tmp_path)  # makes the fake vcc-pki
    exec_start = _section("vcc-pki-backup.service", "Service")["ExecStart"]
    command = exec_start.replace(INSTALLED, str(tmp_path / "vcc-pki")).replace("%%", "%")
    assert command.startswith("/bin/sh -c '") and command.endswith("'")
    subprocess.run(["/bin/sh", "-c", command[len("/bin/sh -c '"):-1]], check=True, timeout=60)
    args = (tmp_path / "args").read_text().split()
    assert args[:2] == ["backup", "--out"]
    assert re.fullmatch(r"/var/backups/vcc-pki/vcc-pki-\d{8}T\d{6}Z\.tar\.gz", args[2])


def test_gateway_unit() -> None:
    service = _section("vcc-pki.service", "Service")
    assert service["User"] == "vcc-pki" and service["KillSignal"] == "SIGTERM"
    assert service["ExecStart"] == f"{INSTALLED} serve"
    assert _section("vcc-pki.service", "Install")["WantedBy"] == "multi-user.target"
