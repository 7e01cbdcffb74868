# Targets a newcomer can guess: run, test, lint, bench, conformance.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DATA_DIR ?= vcc-pki-data
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run init test lint bench bench-deps conformance mutation fuzz hostile system-deps test-services clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Demo PKI on the embedded defaults (SQLite, software keys), served on loopback.
run: $(STAMP)
	VCC_PKI_DATA_DIR=$(DATA_DIR) $(BIN)/vcc-pki init
	VCC_PKI_DATA_DIR=$(DATA_DIR) VCC_PKI_WORKERS=$${VCC_PKI_WORKERS:-1} exec $(BIN)/vcc-pki serve

# softhsm2 (the PKCS#11 token of the tests), opensc (pkcs11-tool), openssl and curl;
# the ACME clients of the conformance tests: certbot, lego, dehydrated; the checkers of
# deploy/ (issue 15): kubectl (kustomize), promtool, systemd-analyze; chromium renders the
# HTML compliance report and drives the web admin page's browser tests (Playwright drives
# it, it downloads no browser); redis-server (the replica tests start one of their own).
system-deps:
	@if ! command -v softhsm2-util >/dev/null || ! command -v pkcs11-tool >/dev/null \
	    || ! command -v openssl >/dev/null || ! command -v curl >/dev/null \
	    || ! command -v certbot >/dev/null || ! command -v lego >/dev/null \
	    || ! command -v dehydrated >/dev/null || ! command -v scepclient >/dev/null \
	    || ! command -v certmonger >/dev/null || ! command -v dbus-run-session >/dev/null \
	    || ! command -v promtool >/dev/null || ! command -v systemd-analyze >/dev/null \
	    || ! command -v chromium >/dev/null || ! command -v redis-server >/dev/null; then \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq softhsm2 opensc openssl \
	    curl certbot lego dehydrated scep certmonger dbus prometheus systemd chromium \
	    redis-server; \
	fi
	@# pg_ctl/initdb (not on PATH): conformance/replicas starts a PostgreSQL of its own.
	@if ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq postgresql; \
	fi
	@# kubectl on its own: another package (Google's kubectl) may own /usr/bin/kubectl, and
	@# dpkg refuses to overwrite it. Debian's 1.20 bundles kustomize v2.0.3: deploy/kubernetes
	@# is written for it too.
	@if ! command -v kubectl >/dev/null; then \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq kubernetes-client; \
	fi

# PostgreSQL and Redis on loopback, started when one is down (they normally run already).
test-services:
	bash scripts/test-services.sh

# Two pytest processes (pytest-xdist), whole test files to each (--dist loadfile: a file's
# module-scoped gateways and browsers are started once); the audit and secret watches
# collect the workers' findings. `$(BIN)/pytest` alone runs in one process.
PYTEST_WORKERS ?= 2
test: $(STAMP) system-deps test-services
	$(BIN)/pytest -n $(PYTEST_WORKERS) --dist loadfile

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

conformance: $(STAMP) system-deps test-services
	$(BIN)/pytest -m conformance

# Coverage-guided fuzzing of every wire parser (issue 16; fuzz/targets.py), FUZZ_SECONDS
# each. make test runs the same targets for a few seconds (tests/test_fuzz.py). What adds
# coverage is merged into fuzz/corpus/TARGET (commit it); crashes go to fuzz/crashes/:
# keep one as fuzz/regressions/TARGET/NAME with its fix (fuzz/README.md).
FUZZ_SECONDS ?= 300
FUZZ_TARGETS ?= acme_jws est scep ocsp_der ocsp_get tsa rest config
fuzz: $(STAMP)
	@for target in $(FUZZ_TARGETS); do \
	  echo "== $$target ($(FUZZ_SECONDS) s)"; \
	  PYTHONHASHSEED=0 $(BIN)/python -m fuzz.run $$target --seconds $(FUZZ_SECONDS) || exit 1; \
	  $(BIN)/python -m fuzz.run $$target --merge || exit 1; \
	done

# The black-box hostile run (issue 16; docs/hostile.md): HOSTILE_REQUESTS mutated requests
# per protocol and the transport attacks against `vcc-pki serve` on SQLite. About half an
# hour at 100,000 on two cores; make test runs a short one (conformance/test_hostile.py).
HOSTILE_REQUESTS ?= 100000
hostile: $(STAMP)
	$(BIN)/python -m conformance.hostile --requests $(HOSTILE_REQUESTS) --progress

# Mutation testing of issuance/revocation, OCSP and CRL building, the TSA token, the audit
# chain, the JWS/EAB checks and tenant scoping (issue 19; pyproject [tool.mutation]). About
# half an hour on two cores; not part of test or CI. Survivors: docs/mutation.md.
mutation: $(STAMP) system-deps test-services
	$(BIN)/python scripts/mutation.py

# Load generators and peers of the benchmarks: hey drives `openssl ocsp` (which hangs on
# wrk's connection probe), ab is a fallback, cfssl ocspserve is an OCSP peer, pebble the
# ACME peer.
bench-deps:
	@if ! command -v wrk >/dev/null || ! command -v cfssl >/dev/null \
	    || ! command -v hey >/dev/null || ! command -v ab >/dev/null \
	    || ! command -v pebble >/dev/null; then \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq wrk golang-cfssl hey \
	    apache2-utils pebble; \
	fi

bench: $(STAMP) system-deps bench-deps
	$(BIN)/python -m conformance.bench.issuance
	$(BIN)/python -m conformance.bench.ocsp
	$(BIN)/python -m conformance.bench.crl
	$(BIN)/python -m conformance.bench.tsa
	$(BIN)/python -m conformance.bench.acme
	$(BIN)/python -m conformance.bench.replicas
	$(BIN)/python -m conformance.bench.scep
	$(BIN)/python -m conformance.bench.isolation
	$(BIN)/python -m conformance.bench.reports

clean:
	rm -rf $(VENV) $(DATA_DIR) *.egg-info mutants mutants.log
