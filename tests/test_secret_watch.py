"""The whole-suite secret watch (tests/secret_watch.py) itself: it finds a handed-out
secret in a log line, as a whole token or its secret part, and nothing else."""

from __future__ import annotations

from pathlib import Path

from ca_core.authority import CreatedToken
from ca_core.records import ApiToken
from tests import secret_watch


def test_the_watch_finds_a_logged_secret(tmp_path: Path) -> None:
    token = CreatedToken("vcc.0123456789abcdef.Zy2iQLkf_h1NLysTnJMlSTnsIvEY14y-12qGWT9Sxr0",
                         ApiToken.__new__(ApiToken))
    assert secret_watch._SECRETS[token.token] == "API token"  # recorded when made
    log = tmp_path / "log.txt"
    log.write_text("INFO a: token id 0123456789abcdef created\n"
                   "WARNING b: bad header 'Bearer Zy2iQLkf_h1NLysTnJMlSTnsIvEY14y-12qGWT9Sxr0'\n"
                   f"ERROR c: {token.token}\n")
    found = secret_watch.leaks(log)
    assert [line.split(" in: ")[1][:9] for line in found] == ["WARNING b", "ERROR c: "]
