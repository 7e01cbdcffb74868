# Shared by the ACME client scripts: env, helpers. Sourced, not run.
# Env: DIRECTORY_URL (https://127.0.0.1:8443/acme/directory), ROOT_CA (the gateway's root
# PEM), HTTP01_PORT and TLSALPN01_PORT (where the gateway validates: the client listens
# there), VCC_PKI_BIN (vcc-pki, for EAB keys), WORK (scratch directory).
set -euo pipefail
: "${DIRECTORY_URL:?}" "${ROOT_CA:?}" "${HTTP01_PORT:?}"
VCC_PKI=${VCC_PKI_BIN:-vcc-pki}
WORK=${WORK:-$(mktemp -d)}
mkdir -p "$WORK"
step() { printf '== %s\n' "$*"; }
fail() { echo "FAIL: $*" >&2; exit 1; }
# The leaf verifies up to the gateway's root with the chain the client saved.
verify_chain() {  # verify_chain <fullchain.pem> <name>
  local full=$1 name=$2
  awk 'BEGIN{n=0} /BEGIN CERT/{n++} n==1' "$full" > "$WORK/leaf.pem"
  awk 'BEGIN{n=0} /BEGIN CERT/{n++} n>1' "$full" > "$WORK/chain.pem"
  openssl verify -CAfile "$ROOT_CA" -untrusted "$WORK/chain.pem" "$WORK/leaf.pem" >/dev/null \
    || fail "$full does not verify up to the root"
  run_expect "DNS:$name" openssl x509 -in "$WORK/leaf.pem" -noout -ext subjectAltName
}
run_expect() {  # run_expect <pattern> <command...>: run it, fail unless its output matches
  local pattern=$1; shift
  local out
  out=$("$@" 2>&1) || { printf '%s\n' "$out"; fail "$* failed"; }
  grep -q -- "$pattern" <<<"$out" || { printf '%s\n' "$out"; fail "expected '$pattern'"; }
}
eab_key() {  # eab_key -> "KID HMAC"
  "$VCC_PKI" acme eab create --org "${ORG:-default}" --json 2>/dev/null \
    | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["kid"], d["hmac_key"])'
}
