"""Throwaway SoftHSM2 tokens for tests of the PKCS#11 key backend.

SoftHSM2 reads ``SOFTHSM2_CONF`` when the library is initialised, and python-pkcs11 keeps a
loaded library for the rest of the process, so tests that use the token in-process share
one token per pytest process: ``session_token()`` makes it once (call it from a
session-scoped fixture) and every test uses its own key labels. ``make_softhsm_token()``
alone suits a token handed to a subprocess (pass ``conf_path`` as ``SOFTHSM2_CONF``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

# Where distributions install the module; SOFTHSM2_MODULE overrides.
_MODULE_CANDIDATES = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib64/pkcs11/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
    "/opt/homebrew/lib/softhsm/libsofthsm2.so",
)


@dataclass(frozen=True)
class SoftHsmToken:
    module_path: str
    label: str
    pin: str
    conf_path: Path
    so_pin: str = "5678"


def softhsm_module() -> str | None:
    """Path of libsofthsm2.so, or None when it is not installed."""
    override = os.environ.get("SOFTHSM2_MODULE")
    candidates = (override,) if override else _MODULE_CANDIDATES
    return next((path for path in candidates if os.path.isfile(path)), None)


def softhsm_available() -> bool:
    return shutil.which("softhsm2-util") is not None and softhsm_module() is not None


def require_softhsm() -> None:
    """Skip without SoftHSM2; in CI (CI=true) a test that cannot run is a failure instead."""
    if softhsm_available():
        return
    message = "SoftHSM2 is not installed (softhsm2-util and libsofthsm2.so; `make system-deps`)"
    if os.environ.get("CI") == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def make_softhsm_token(tmp_dir: Path, label: str = "vcc-test", pin: str = "1234") -> SoftHsmToken:
    """Create a token under ``tmp_dir`` and point this process's SOFTHSM2_CONF at it."""
    module = softhsm_module()
    if module is None or shutil.which("softhsm2-util") is None:
        raise RuntimeError("SoftHSM2 is not installed; call require_softhsm() first")
    token_dir = tmp_dir / "tokens"
    token_dir.mkdir(parents=True, exist_ok=True)
    conf_path = tmp_dir / "softhsm2.conf"
    conf_path.write_text(
        f"directories.tokendir = {token_dir}\n"
        "objectstore.backend = file\n"
        "log.level = ERROR\n"
        "slots.removable = false\n"
    )
    token = SoftHsmToken(module_path=module, label=label, pin=pin, conf_path=conf_path)
    os.environ["SOFTHSM2_CONF"] = str(conf_path)
    result = subprocess.run(
        ["softhsm2-util", "--init-token", "--free", "--label", label,
         "--pin", pin, "--so-pin", token.so_pin],
        env={**os.environ, "SOFTHSM2_CONF": str(conf_path)},
        capture_output=True, text=True, timeout=60, check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"softhsm2-util --init-token failed: {result.stderr or result.stdout}")
    return token


_session_token: SoftHsmToken | None = None


def session_token(tmp_path_factory: pytest.TempPathFactory) -> SoftHsmToken:
    """The token of this pytest process, made on first use (see the module docstring)."""
    global _session_token
    require_softhsm()
    if _session_token is None:
        _session_token = make_softhsm_token(tmp_path_factory.mktemp("softhsm"))
    else:
        # Another token made since (e.g. for a subprocess) may have moved SOFTHSM2_CONF.
        os.environ["SOFTHSM2_CONF"] = str(_session_token.conf_path)
    return _session_token
