#!/usr/bin/env bash
# lego against the gateway's ACME server: http-01, tls-alpn-01, dns-01 (wildcard, through
# the `exec` provider and the test DNS server), EAB, renew, revoke, --preferred-chain (an
# alternate chain through a cross-certificate).
# Extra env: TLSALPN01_PORT, DNS_PORT (the test DNS server), TXT_DIR (its records).
source "$(dirname "$0")/common.sh"
: "${TLSALPN01_PORT:?}" "${DNS_PORT:?}" "${TXT_DIR:?}"
export LEGO_CA_CERTIFICATES=$ROOT_CA
export EXEC_PATH="$(cd "$(dirname "$0")" && pwd)/lego_dns_hook.sh" TXT_DIR
export EXEC_SEQUENCE_INTERVAL=1 EXEC_POLLING_INTERVAL=1 EXEC_PROPAGATION_TIMEOUT=30
lg() {  # lg <path name> <lego args...>
  local path="$WORK/lego-$1"; shift
  lego --server "$DIRECTORY_URL" --email ops@example.org --accept-tos --path "$path" "$@"
}
step "lego run --http"
lg main --domains http.lego.svc.test --http --http.port ":$HTTP01_PORT" run
verify_chain "$WORK/lego-main/certificates/http.lego.svc.test.crt" http.lego.svc.test
step "lego run --tls (tls-alpn-01)"
lg main --domains alpn.lego.svc.test --tls --tls.port ":$TLSALPN01_PORT" run
verify_chain "$WORK/lego-main/certificates/alpn.lego.svc.test.crt" alpn.lego.svc.test
step "lego run --dns exec: a wildcard and its base name (dns-01)"
lg main --domains '*.dns.lego.svc.test' --domains dns.lego.svc.test --dns exec \
  --dns.resolvers "127.0.0.1:$DNS_PORT" --dns.disable-cp run
verify_chain "$WORK/lego-main/certificates/_.dns.lego.svc.test.crt" '\*.dns.lego.svc.test'
step "lego renew"
before=$(openssl x509 -in "$WORK/lego-main/certificates/http.lego.svc.test.crt" -noout -serial)
lg main --domains http.lego.svc.test --http --http.port ":$HTTP01_PORT" renew --days 3650 \
  --no-random-sleep
after=$(openssl x509 -in "$WORK/lego-main/certificates/http.lego.svc.test.crt" -noout -serial)
[ "$before" != "$after" ] || fail "renew kept the old certificate"
step "lego revoke --reason 4 (superseded)"
lg main --domains alpn.lego.svc.test revoke --reason 4 --keep
certs="$WORK/lego-main/certificates"
expect_revoked "$certs/alpn.lego.svc.test.crt" "$certs/alpn.lego.svc.test.issuer.crt" superseded
step "lego run --preferred-chain: the alternate chain through a cross-certificate"
cross_certify "Lego Bridge Root"
lg main --domains chain.lego.svc.test --http --http.port ":$HTTP01_PORT" run \
  --preferred-chain "Lego Bridge Root"
verify_alternate_chain "$WORK/lego-main/certificates/chain.lego.svc.test.crt" "Lego Bridge Root"
step "lego run with EAB"
read -r KID HMAC < <(eab_key)
lg eab --eab --kid "$KID" --hmac "$HMAC" --domains eab.lego.svc.test --http \
  --http.port ":$HTTP01_PORT" run
verify_chain "$WORK/lego-eab/certificates/eab.lego.svc.test.crt" eab.lego.svc.test
echo OK
