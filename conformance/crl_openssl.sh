#!/usr/bin/env bash
# Drive a running gateway's CRLs with the real client, openssl: fetch the CRL named in an
# issued certificate's CRL distribution point, `openssl crl -verify` it, `openssl verify
# -crl_check` (and -crl_check_all with the root's and intermediate's CRLs) accepts the
# certificate; `vcc-pki revoke` (another process); the next CRL lists it with its reason and
# `openssl verify -crl_check` rejects the certificate. With partitioned CRLs
# (VCC_PKI_CRL_PARTITIONS > 0 on the gateway) the CDP names the certificate's partition and
# that partition's CRL (critical IssuingDistributionPoint) is the one used.
#
#   VCC_PKI_DATA_DIR=vcc-pki-data conformance/crl_openssl.sh
#
# Needs: openssl, curl, python3 (JSON only), `vcc-pki` on PATH (or VCC_PKI_BIN).
# Env: HTTP_URL (default http://127.0.0.1:8080), HTTPS_URL (default https://localhost:8443),
# ORG (default "default"), VCC_PKI_BIN.
set -euo pipefail

source "$(dirname "$0")/lib.sh"
fetch_crl() {  # fetch_crl <url> <out.pem>: poll until the gateway has published it
  for _ in $(seq 1 200); do
    if curl -fsS "$1" -o crl.der 2>/dev/null; then
      openssl crl -inform DER -in crl.der -out "$2"; return 0
    fi
    sleep 0.05
  done
  fail "no CRL at $1"
}
crl_number() { openssl crl -in "$1" -noout -crlnumber | cut -d= -f2; }

issue_from_rest crl.example.test
"$VCC_PKI" ca export intermediate > intermediate.pem

step "the CRL distribution point of the certificate"
CDP=$(openssl x509 -in svc.pem -noout -ext crlDistributionPoints | grep -o 'URI:.*' | cut -c5-)
echo "CDP $CDP"
case "$CDP" in
  */crl/"$ORG"-issuing.crl) PARTITIONED="" ;;
  */crl/"$ORG"-issuing/[0-9]*.crl) PARTITIONED=1 ;;
  *) fail "unexpected CDP $CDP" ;;
esac
# The CDP carries the public URL; fetch it from this gateway.
CRL_URL="$HTTP_URL/crl/${CDP#*/crl/}"
fetch_crl "$CRL_URL" issuing-crl.pem
fetch_crl "$HTTP_URL/crl/intermediate.crl" intermediate-crl.pem
fetch_crl "$HTTP_URL/crl/root.crl" root-crl.pem
curl -fsS "$HTTP_URL/crl/$ORG-issuing.pem" -o full-crl.pem
grep -q "BEGIN X509 CRL" full-crl.pem || fail "the PEM form"
if [ -n "$PARTITIONED" ]; then
  out=$(openssl crl -in issuing-crl.pem -noout -text)
  expect "X509v3 Issuing Distribution Point: critical" "$out"
  expect "Only User Certificates" "$out"
  expect "$CDP" "$out"
fi

step "openssl crl -verify: signed by the CA"
out=$(openssl crl -in issuing-crl.pem -CAfile issuing.pem -noout -verify 2>&1)
expect "verify OK" "$out"
out=$(openssl crl -in intermediate-crl.pem -CAfile intermediate.pem -noout -verify 2>&1)
expect "verify OK" "$out"
out=$(openssl crl -in root-crl.pem -CAfile root.pem -noout -verify 2>&1)
expect "verify OK" "$out"
out=$(openssl crl -in issuing-crl.pem -noout -text)
expect "X509v3 CRL Number:" "$out"; expect "X509v3 Authority Key Identifier:" "$out"
expect "Next Update:" "$out"

step "openssl verify -crl_check: good before revocation"
out=$(openssl verify -crl_check -CAfile root.pem -untrusted chain.pem -CRLfile issuing-crl.pem \
  svc.pem 2>&1)
expect "svc.pem: OK" "$out"
cat issuing-crl.pem intermediate-crl.pem root-crl.pem > all-crls.pem
out=$(openssl verify -crl_check_all -CAfile root.pem -untrusted chain.pem \
  -CRLfile all-crls.pem svc.pem 2>&1)
expect "svc.pem: OK" "$out"
BEFORE=$(crl_number issuing-crl.pem)

step "vcc-pki revoke $SERIAL (another process): in the next CRL"
"$VCC_PKI" revoke "$SERIAL" --reason key_compromise
started=$(python3 -c 'import time; print(time.monotonic())')
for _ in $(seq 1 200); do
  fetch_crl "$CRL_URL" issuing-crl.pem
  [ "$(crl_number issuing-crl.pem)" != "$BEFORE" ] && break
  sleep 0.05
done
[ "$(crl_number issuing-crl.pem)" != "$BEFORE" ] || fail "no new CRL after the revocation"
echo "new CRL $(crl_number issuing-crl.pem) after" \
  "$(python3 -c "import time; print(round(time.monotonic() - $started, 3))") s"
HEX=$(openssl x509 -in svc.pem -noout -serial | cut -d= -f2)
# The certificate's own entry: its serial line up to the next entry or the signature.
entry=$(openssl crl -in issuing-crl.pem -noout -text | awk -v serial="Serial Number: $HEX" '
  index($0, serial) { found = 1; print; next }
  found && (/Serial Number:/ || /Signature Algorithm:/) { exit }
  found { print }')
[ -n "$entry" ] || fail "serial $HEX is not in the CRL"
WHEN=$(openssl_time "$(revoked_at "$SERIAL")")  # the time the revocation was stored
expect_line "Revocation Date: $WHEN" "$entry"; expect_line "Key Compromise" "$entry"
out=$(openssl crl -in issuing-crl.pem -CAfile issuing.pem -noout -verify 2>&1)
expect "verify OK" "$out"

step "openssl verify -crl_check: rejected after revocation"
out=$(openssl verify -crl_check -CAfile root.pem -untrusted chain.pem -CRLfile issuing-crl.pem \
  svc.pem 2>&1 || true)
expect "certificate revoked" "$out"
cat issuing-crl.pem intermediate-crl.pem root-crl.pem > all-crls.pem
out=$(openssl verify -crl_check_all -CAfile root.pem -untrusted chain.pem \
  -CRLfile all-crls.pem svc.pem 2>&1 || true)
expect "certificate revoked" "$out"
if [ -n "$PARTITIONED" ]; then
  step "the full CRL lists it as well"
  curl -fsS "$HTTP_URL/crl/$ORG-issuing.crl" -o full.der
  openssl crl -inform DER -in full.der -noout -text | has "Serial Number: $HEX" \
    || fail "not in the full CRL"
fi

step "bad requests: 404"
for path in nosuch.crl "$ORG-issuing.txt" "$ORG-issuing/0.crl" "$ORG-issuing/x.crl"; do
  CODE=$(curl -sS -o /dev/null -w '%{http_code}' "$HTTP_URL/crl/$path")
  [ "$CODE" = 404 ] || fail "/crl/$path gave $CODE"
done
echo "OK"
