#!/usr/bin/env bash
# The service registry (issue 14) against a running gateway: `vcc-pki service bootstrap`
# registers the seed's services from deploy/vcc-services.toml and writes each an
# mtls_service certificate and key; then a service calls the registry on the EST port with
# nothing but its own certificate and key (curl, mTLS): it reads itself, reports a
# heartbeat, reads the policy matrix, renews its certificate; another service's entry is
# 404. The bootstrap run again changes nothing.
#
#   VCC_PKI_DATA_DIR=vcc-pki-data conformance/services_curl.sh
#
# Needs: curl, openssl, cmp; `vcc-pki` on PATH (or VCC_PKI_BIN) on the gateway's data
# directory. Env: HTTP_URL (default http://127.0.0.1:8080), EST_URL (default
# https://localhost:8444), SERVICES_FILE (default deploy/vcc-services.toml), VCC_PKI_BIN.
set -euo pipefail
has() { grep "$@" >/dev/null; }

HTTP_URL=${HTTP_URL:-http://127.0.0.1:8080}
EST_URL=${EST_URL:-https://localhost:8444}
VCC_PKI=${VCC_PKI_BIN:-vcc-pki}
here=$(cd "$(dirname "$0")/.." && pwd)
SERVICES_FILE=${SERVICES_FILE:-$here/deploy/vcc-services.toml}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"

step() { printf '== %s\n' "$*"; }
fail() { printf 'FAILED: %s\n' "$*" >&2; exit 1; }
as_clara() {  # as_clara METHOD PATH [JSON]: the body, then the status on its own line
  local args=(-sS --cacert root.pem --cert services/clara/cert.pem
              --key services/clara/key.pem -X "$1" -w '\n%{http_code}')
  [ $# -ge 3 ] && args+=(-H 'Content-Type: application/json' --data-binary "$3")
  curl "${args[@]}" "$EST_URL$2"
}
status() { tail -n 1; }

step "the root; vcc-pki service bootstrap --from $(basename "$SERVICES_FILE")"
curl -fsS "$HTTP_URL/ca/root.pem" -o root.pem
"$VCC_PKI" service bootstrap --from "$SERVICES_FILE" --out services | tee first.txt
for slug in clara covina argus veritas vpb; do
  for f in cert.pem key.pem chain.pem; do [ -s "services/$slug/$f" ] || fail "no $slug/$f"; done
  [ "$(stat -c %a "services/$slug/key.pem")" = 600 ] || fail "$slug/key.pem is not 0600"
  openssl verify -CAfile root.pem -untrusted "services/$slug/chain.pem" \
    "services/$slug/cert.pem" | has ': OK' || fail "$slug's certificate does not verify"
done

step "run again: nothing changes"
cp -a services before
"$VCC_PKI" service bootstrap --from "$SERVICES_FILE" --out services | tee second.txt
[ "$(grep -c ': unchanged' second.txt)" = 5 ] || fail "the second run changed something"
diff -r before services >/dev/null || fail "the second run rewrote files"
"$VCC_PKI" service list | tee list.txt
[ "$(wc -l < list.txt)" = 6 ] || fail "service list: one line per service expected"

step "clara, with its own certificate on the EST port (mTLS)"
as_clara GET /api/v1/services/clara > me.txt
[ "$(status < me.txt)" = 200 ] || fail "GET its own entry: $(cat me.txt)"
has '"renewal_state": "ok"' me.txt || fail "renewal state: $(cat me.txt)"
as_clara POST /api/v1/services/clara/heartbeat '{"status": "healthy", "version": "3.0"}' \
  > beat.txt
[ "$(status < beat.txt)" = 200 ] || fail "heartbeat: $(cat beat.txt)"
has '"health_status": "healthy"' beat.txt || fail "heartbeat not recorded"
as_clara GET /api/v1/services/policy > policy.txt
[ "$(status < policy.txt)" = 200 ] || fail "policy: $(cat policy.txt)"
has '"clara": {"can_call": \["covina"\]' policy.txt || fail "the matrix: $(cat policy.txt)"
as_clara POST /api/v1/services/covina/heartbeat '{"status": "unhealthy"}' > other.txt
[ "$(status < other.txt)" = 404 ] || fail "another service's heartbeat: $(cat other.txt)"
as_clara GET /api/v1/services/covina > other.txt
[ "$(status < other.txt)" = 404 ] || fail "another service's entry: $(cat other.txt)"
as_clara POST /api/v1/services/clara/certificate/renew '{}' > renewed.txt
[ "$(status < renewed.txt)" = 201 ] || fail "renew: $(cat renewed.txt)"
"$VCC_PKI" service list | has '^clara .* ok ' || fail "clara not listed as ok"

step "without a certificate: 401"
code=$(curl -sS --cacert root.pem -o /dev/null -w '%{http_code}' "$EST_URL/api/v1/services")
[ "$code" = 401 ] || fail "no client certificate: $code"
echo OK
