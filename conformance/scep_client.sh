#!/usr/bin/env bash
# Enroll and renew with a real SCEP client (RFC 8894): Debian's `scep` package (micromdm's
# scepclient) against a running gateway, verifying the certificates with openssl.
#
#   VCC_PKI_SCEP_ACCEPT_SINGLE_DES=true vcc-pki serve &
#   HTTP_URL=http://127.0.0.1:8080 conformance/scep_client.sh
#
# scepclient 2.1 encrypts its requests with single DES whatever GetCACaps says, so the
# gateway must run with VCC_PKI_SCEP_ACCEPT_SINGLE_DES=true (its replies are AES-256).
# It also encrypts to every certificate of GetCACert unless -ca-fingerprint picks one:
# the RA certificate's SHA-256 is passed.
# Needs: scepclient, openssl, curl, `vcc-pki` on PATH (or VCC_PKI_BIN).
# Env: HTTP_URL, ORG (default default), STATIC_CHALLENGE (the gateway's
#      VCC_PKI_SCEP_CHALLENGE, if set: tried too).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
SCEP_URL="$HTTP_URL/scep"

step "GetCACaps: AES and SHA-256, never single DES"
caps=$(curl -fsS "$SCEP_URL?operation=GetCACaps")
expect_line AES "$caps"
expect_line SHA-256 "$caps"
expect_line POSTPKIOperation "$caps"
printf '%s\n' "$caps" | has -x 'DES' && fail "single DES advertised"

step "GetCACert: the RA certificate and the CA chain, certs-only"
curl -fsS -D headers.txt "$SCEP_URL?operation=GetCACert" -o cacerts.p7
expect "application/x-x509-ca-ra-cert" "$(cat headers.txt)"
openssl pkcs7 -inform DER -in cacerts.p7 -print_certs -out cacerts.pem
awk '/BEGIN/{n++} n{print > ("ca" n ".pem")}' cacerts.pem
ra=""
for f in ca*.pem; do
  [ "$f" = cacerts.pem ] && continue
  if openssl x509 -in "$f" -noout -subject | has "SCEP RA"; then ra=$f; fi
done
[ -n "$ra" ] || fail "no RA certificate in GetCACert"
openssl x509 -in "$ra" -noout -ext keyUsage | has "Digital Signature, Key Encipherment" \
  || fail "the RA certificate lacks digitalSignature and keyEncipherment"
ra_fp=$(openssl x509 -in "$ra" -outform DER | sha256sum | cut -d' ' -f1)
curl -fsS "$HTTP_URL/ca/root.pem" -o root.pem
openssl verify -CAfile root.pem -untrusted cacerts.pem "$ra" >/dev/null

enroll() {  # enroll <name> [challenge]: scepclient's output; key.pem/cert.pem in ./<name>/
  mkdir -p "$1"
  scepclient -server-url "$SCEP_URL" -private-key "$1/key.pem" -certificate "$1/cert.pem" \
    ${2:+-challenge "$2"} -cn "$1" -ca-fingerprint "$ra_fp" 2>&1 || true
}
der() { openssl x509 -in "$1" -outform DER | sha256sum; }

step "enroll with a one-time challenge"
challenge=$("$VCC_PKI" scep challenge create --org "$ORG" --expires 10m 2>/dev/null)
out=$(enroll device-1 "$challenge")
expect "server returned a certificate" "$out"
openssl verify -CAfile root.pem -untrusted cacerts.pem device-1/cert.pem
subject=$(openssl x509 -in device-1/cert.pem -noout -subject)
expect "CN = device-1" "$subject"
openssl x509 -in device-1/cert.pem -noout -ext extendedKeyUsage | has "Client Authentication" \
  || fail "no clientAuth"

step "the spent challenge with a new key: FAILURE badRequest, nothing issued"
out=$(enroll device-2 "$challenge")
expect "failInfo: badRequest" "$out"
[ ! -s device-2/cert.pem ] || fail "a certificate was issued for a spent challenge"

step "a wrong challenge: FAILURE badRequest"
out=$(enroll device-3 "not-the-challenge")
expect "failInfo: badRequest" "$out"
[ ! -s device-3/cert.pem ] || fail "a certificate was issued for a wrong challenge"

step "renew: RenewalReq signed by the certificate, no challenge, a new certificate"
cp device-1/cert.pem device-1/first.pem
out=$(enroll device-1)
expect "server returned a certificate" "$out"
[ "$(der device-1/cert.pem)" != "$(der device-1/first.pem)" ] || fail "not renewed"
openssl verify -CAfile root.pem -untrusted cacerts.pem device-1/cert.pem
cp device-1/cert.pem device-1/renewed.pem

step "the same renewal again (same signer, key and transactionID): the same certificate"
cp device-1/first.pem device-1/cert.pem
out=$(enroll device-1)
expect "server returned a certificate" "$out"
[ "$(der device-1/cert.pem)" = "$(der device-1/renewed.pem)" ] \
  || fail "a second certificate was issued for the same request"

if [ -n "${STATIC_CHALLENGE:-}" ]; then
  step "the static challenge (VCC_PKI_SCEP_CHALLENGE), twice"
  out=$(enroll device-4 "$STATIC_CHALLENGE")
  expect "server returned a certificate" "$out"
  out=$(enroll device-5 "$STATIC_CHALLENGE")
  expect "server returned a certificate" "$out"
  openssl verify -CAfile root.pem -untrusted cacerts.pem device-5/cert.pem
fi
echo OK
