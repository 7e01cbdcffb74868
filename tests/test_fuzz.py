"""The fuzz harnesses of fuzz/ (issue 16), short: every corpus input and every past crash
replayed in process, then each target under atheris for a fixed number of runs from a
fixed seed (a few seconds each; ``make fuzz`` runs them for minutes). A crash fails the
test with the input written to the scratch directory and atheris's traceback in the
output. Each crash found so far is also a named regression test below.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ca_core import admin
from ca_core.errors import BadRequest
from fuzz import targets
from fuzz.run import HERE, corpus_dir
from gateway.config import ConfigError, load_config

# Runs per target: about a second of fuzzing each after a start-up of two (instrumenting
# the project's packages). SCEP decrypts with RSA on every input and is the slowest.
RUNS = {"acme_jws": 3000, "est": 5000, "scep": 300, "ocsp_der": 3000, "ocsp_get": 3000,
        "tsa": 3000, "rest": 5000, "config": 1000}


def test_every_target_has_seeds_and_a_budget() -> None:
    assert set(RUNS) == set(targets.TARGETS)
    for name in targets.TARGETS:
        assert any(corpus_dir(name).glob("seed-*")), name


@pytest.mark.parametrize("name", sorted(targets.TARGETS))
def test_corpus_and_regressions_replay(name: str) -> None:
    target = targets.TARGETS[name]
    inputs = sorted(corpus_dir(name).glob("*")) + sorted((HERE / "regressions" / name).glob("*"))
    for path in inputs:
        target(path.read_bytes())  # raises on anything but the protocol's own error


@pytest.mark.parametrize("name", sorted(targets.TARGETS))
def test_fuzz_briefly(name: str, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONHASHSEED": "0"}  # the same mutations on every run
    result = subprocess.run(
        [sys.executable, "-m", "fuzz.run", name, "--light", "--seed", "1",
         "--runs", str(RUNS[name]), "--scratch", str(tmp_path / "new")],
        cwd=HERE.parent, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-4000:]


# --- what the fuzzers found ----------------------------------------------------------------

def test_config_file_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    # fuzz/regressions/config/non-utf8: a UnicodeDecodeError traceback at start-up.
    path = tmp_path / "config.toml"
    path.write_bytes(b'data_dir = "caf\xe9"\n')
    with pytest.raises(ConfigError, match="config file"):
        load_config(environ={}, path=str(path))


def test_config_integer_infinity_is_a_config_error(tmp_path: Path) -> None:
    # fuzz/regressions/config/int-infinity: int(inf) raised OverflowError at start-up.
    path = tmp_path / "config.toml"
    path.write_text("workers = inf\n")
    with pytest.raises(ConfigError, match="invalid value for workers"):
        load_config(environ={}, path=str(path))


def test_deeply_nested_cursor_is_bad_request() -> None:
    # fuzz/regressions/rest/nested-cursor: json.loads raised RecursionError (a 500).
    cursor = base64.urlsafe_b64encode(b"[" * 50000).decode()
    for decode in (admin.seq_cursor, admin.time_id_cursor):
        with pytest.raises(BadRequest, match="invalid cursor"):
            decode(cursor)


@pytest.mark.parametrize("resolver", ["127.0.0.1:\u00b2", "127.0.0.1:99999", "127.0.0.1:0",
                                      "localhost:53", "127.0.0.1:"])
def test_acme_dns_resolver_is_checked_at_load(resolver: str) -> None:
    # fuzz/regressions/config/resolver-superscript-port: "²".isdigit() passed the check,
    # then int() raised ValueError when the validator was built; a host name did the same
    # in dnspython.
    with pytest.raises(ConfigError, match="VCC_PKI_ACME_DNS_RESOLVER"):
        load_config(environ={"VCC_PKI_ACME_DNS_RESOLVER": resolver})
    load_config(environ={"VCC_PKI_ACME_DNS_RESOLVER": "[::1]:5353"})
