"""Issue 16: no secret reaches a log, over the whole test suite.

Loaded for every pytest run (the root conftest.py). It records
every secret the code under test hands out in this process (API tokens, EST enrollment
passwords, SCEP challenges, ACME EAB HMAC keys: each shown once to its caller and never
to be written anywhere else) and every log record at INFO and above (as a deployment logs
by default), with its traceback. When the session ends, any secret found in a record fails
the run, naming the secret's kind and the record. Gateways run as subprocesses by the
conformance tests keep their own logs, which ``conformance.gateway.assert_clean_log``
checks.
"""

from __future__ import annotations

import base64
import functools
import logging
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

_SECRETS: dict[str, str] = {}  # secret text -> what it is
_WORDS = (re.compile(r"[A-Za-z0-9_\-]{16,}"), re.compile(r"[A-Za-z0-9_\-.]{16,}"))


class _Recorder(logging.Handler):
    def __init__(self, path: Path) -> None:
        super().__init__(logging.DEBUG)
        self.path = path
        self._file = path.open("a", encoding="utf-8", errors="backslashreplace")
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
        except Exception:  # a record whose arguments do not format: its raw parts
            text = f"{record.levelname} {record.name}: {record.msg!r} {record.args!r}"
        self._file.write(text.replace("\n", "\n\t") + "\n")

    def close(self) -> None:
        self._file.close()
        super().close()


_recorder: _Recorder | None = None


def remember(kind: str, *texts: str) -> None:
    for text in texts:
        if len(text) >= 16:
            _SECRETS[text] = kind


def _wrap_init(cls: type, kind: str, secrets_of: Callable[[Any], tuple[str, ...]]) -> None:
    original = cls.__init__

    @functools.wraps(original)
    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        remember(kind, *secrets_of(self))

    cls.__init__ = init  # type: ignore[misc]


def _eab_texts(key: Any) -> tuple[str, ...]:
    raw = bytes(key.hmac_key)
    return (base64.urlsafe_b64encode(raw).decode().rstrip("="),
            base64.b64encode(raw).decode().rstrip("="), raw.hex())


def pytest_configure(config: pytest.Config) -> None:
    global _recorder
    from ca_core.authority import CreatedToken
    from ca_core.est import CreatedSecret
    from ca_core.records import EabKey
    from ca_core.scep import CreatedChallenge

    _wrap_init(CreatedToken, "API token", lambda t: (t.token, t.token.rpartition(".")[2]))
    _wrap_init(CreatedSecret, "EST enrollment password", lambda s: (s.password,))
    _wrap_init(CreatedChallenge, "SCEP challenge", lambda c: (c.password,))
    _wrap_init(EabKey, "ACME EAB HMAC key", _eab_texts)
    path = Path(tempfile.mkstemp(prefix="vcc-pki-test-log-", suffix=".txt")[1])
    _recorder = _Recorder(path)
    root = logging.getLogger()
    root.addHandler(_recorder)
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)


def leaks(path: Path) -> list[str]:
    """Each secret found in the recorded log, with the start of its record."""
    found: list[str] = []
    with path.open(encoding="utf-8", errors="replace") as log:
        for line in log:
            words = {w for pattern in _WORDS for w in pattern.findall(line)}
            kinds = sorted({_SECRETS[secret] for secret in words & _SECRETS.keys()})
            found += [f"{kind} in: {line[:300].rstrip()}" for kind in kinds]
    return found


# What pytest-xdist workers reported: the secrets each handed out, what they found.
_worker_secrets: list[int] = []
_worker_found: list[str] = []


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    """pytest-xdist (make test runs two workers): each worker watches its own secrets and
    logs; what it found joins the controller's, which reports it and fails the run."""
    found = getattr(node, "workeroutput", {}).get("secret_watch")
    if found:
        _worker_secrets.append(found["secrets"])
        _worker_found.extend(found["found"])


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _recorder is None:
        return
    logging.getLogger().removeHandler(_recorder)
    _recorder.close()
    try:
        found = leaks(_recorder.path)
    finally:
        _recorder.path.unlink(missing_ok=True)
    output = getattr(session.config, "workeroutput", None)
    if output is not None:  # a pytest-xdist worker: the controller reports (above)
        output["secret_watch"] = {"secrets": len(_SECRETS), "found": found}
        return
    found += _worker_found
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"secret watch: {len(_SECRETS) + sum(_worker_secrets)} secrets "
                            f"handed out, {len(found)} found in the logs")
    if found:
        for line in found[:20]:
            if reporter is not None:
                reporter.write_line(f"SECRET IN LOG: {line}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
