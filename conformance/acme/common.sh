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
run_expect_line() {  # run_expect_line <line> <command...>: fail unless it prints exactly <line>
  local line=$1; shift
  local out
  out=$("$@" 2>&1) || { printf '%s\n' "$out"; fail "$* failed"; }
  sed 's/^[[:space:]]*//; s/[[:space:]]*$//' <<<"$out" | grep -qxF -- "$line" \
    || { printf '%s\n' "$out"; fail "expected the line '$line'"; }
}
# The gateway's OCSP responder (the URL in the certificate) answers revoked, with exactly
# this reason ("" for none: an unspecified reason is left out, RFC 5280 5.3.1). Polled for
# up to 5 s: another gateway process learns of a revocation up to a second later.
expect_revoked() {  # expect_revoked <cert.pem> <chain.pem (issuer first)> <reason or "">
  local cert=$1 chain=$2 reason=$3 url out deadline
  url=$(openssl x509 -in "$cert" -noout -ocsp_uri)
  awk '/BEGIN CERT/{n++} n==1' "$chain" > "$WORK/issuer.pem"
  deadline=$(( ${EPOCHREALTIME/./} / 1000 + 5000 ))
  while :; do
    out=$(openssl ocsp -issuer "$WORK/issuer.pem" -cert "$cert" -url "$url" -CAfile "$ROOT_CA" \
      -verify_other "$chain" -no_nonce 2>&1) || true
    grep -qxF "$cert: revoked" <<<"$out" && break
    (( ${EPOCHREALTIME/./} / 1000 < deadline )) \
      || { printf '%s\n' "$out"; fail "$cert is not revoked in OCSP"; }
    sleep 0.1
  done
  grep -qxF "Response verify OK" <<<"$out" || { printf '%s\n' "$out"; fail "OCSP verify"; }
  if [ -n "$reason" ]; then
    grep -qx "[[:space:]]*Reason: $reason" <<<"$out" \
      || { printf '%s\n' "$out"; fail "not revoked for $reason"; }
  elif grep -q "Reason:" <<<"$out"; then
    printf '%s\n' "$out"; fail "a reason where none was given"
  fi
}
eab_key() {  # eab_key -> "KID HMAC"
  "$VCC_PKI" acme eab create --org "${ORG:-default}" --json 2>/dev/null \
    | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["kid"], d["hmac_key"])'
}
# Another authority's root ("bridge", made with openssl) cross-certifies the gateway's
# intermediate from `vcc-pki ca csr`; `vcc-pki ca add-cross` records it, and from then on
# the ACME server offers a second chain (rel="alternate") up to that root.
cross_certify() {  # cross_certify <bridge root CN>; leaves $WORK/bridge.pem
  local cn=$1
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
    -keyout "$WORK/bridge.key" -out "$WORK/bridge.pem" -subj "/O=State Bridge/CN=$cn" \
    2>/dev/null
  "$VCC_PKI" ca csr intermediate > "$WORK/intermediate.csr"
  openssl req -in "$WORK/intermediate.csr" -noout -verify 2>/dev/null \
    || fail "the intermediate's CSR does not verify"
  printf '%s\n' "basicConstraints=critical,CA:TRUE" "keyUsage=critical,keyCertSign,cRLSign" \
    "subjectKeyIdentifier=hash" "authorityKeyIdentifier=keyid" > "$WORK/cross.ext"
  openssl x509 -req -in "$WORK/intermediate.csr" -CA "$WORK/bridge.pem" \
    -CAkey "$WORK/bridge.key" -set_serial "0x$(openssl rand -hex 16)" -days 365 \
    -extfile "$WORK/cross.ext" -out "$WORK/cross.pem" 2>/dev/null
  cat "$WORK/cross.pem" "$WORK/bridge.pem" > "$WORK/cross-chain.pem"
  run_expect "alternate chain up to CN=$cn" "$VCC_PKI" ca add-cross intermediate \
    "$WORK/cross-chain.pem"
}
# The chain a client saved leads to the bridge root: its topmost certificate's issuer is the
# bridge, and the leaf verifies with the bridge root as the only trust anchor.
verify_alternate_chain() {  # verify_alternate_chain <fullchain.pem> <bridge root CN>
  local full=$1 cn=$2
  awk 'BEGIN{n=0} /BEGIN CERT/{n++} n==1' "$full" > "$WORK/leaf.pem"
  awk 'BEGIN{n=0} /BEGIN CERT/{n++} n>1' "$full" > "$WORK/chain.pem"
  openssl verify -CAfile "$WORK/bridge.pem" -untrusted "$WORK/chain.pem" "$WORK/leaf.pem" \
    >/dev/null || fail "$full does not verify up to the bridge root $cn"
  # and not the default chain: the same leaf and chain do not lead up to our root
  if openssl verify -CAfile "$ROOT_CA" -untrusted "$WORK/chain.pem" "$WORK/leaf.pem" \
      >/dev/null 2>&1; then
    fail "$full still holds the default chain"
  fi
  run_expect "issuer=.*CN *= *$cn" openssl x509 -noout -issuer \
    -in <(awk 'BEGIN{n=0} /BEGIN CERT/{n++} {c[n]=c[n] $0 "\n"} END{printf "%s", c[n]}' "$full")
}
