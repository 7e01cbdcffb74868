#!/usr/bin/env bash
# Drive a running gateway's OCSP responder with the real clients: `openssl ocsp` (POST, SHA-1
# and SHA-256 CertIDs, with and without a nonce) and curl (the RFC 5019 GET form, then
# `openssl ocsp -respin`); revoke with `vcc-pki revoke` (another process) and see `revoked`
# with its reason within a second, from every gateway process; foreign issuers and garbage
# get `unauthorized` and `malformedrequest`.
#
#   VCC_PKI_DATA_DIR=vcc-pki-data conformance/ocsp_openssl.sh
#
# Needs: openssl, curl, python3 (JSON and URL encoding only), `vcc-pki` on PATH (or
# VCC_PKI_BIN). Env: HTTP_URL (default http://127.0.0.1:8080), HTTPS_URL (default
# https://localhost:8443), ORG (default "default"), VCC_PKI_BIN.
set -euo pipefail

source "$(dirname "$0")/lib.sh"
ms() { local t=${EPOCHREALTIME/./}; echo $((t / 1000)); }  # wall clock in ms, no subprocess

issue_from_rest ocsp.example.test
openssl x509 -in svc.pem -noout -ocsp_uri | has "/ocsp$" || fail "no OCSP URL in the AIA"
OCSP_URL="$HTTP_URL/ocsp"
echo "serial $SERIAL, responder $OCSP_URL"

# openssl ocsp verifies the responder certificate up to -CAfile, with the CA chain as
# untrusted intermediates (the delegated responder is issued by the issuing CA).
ask() {  # ask <extra openssl ocsp options...>  (a digest option must precede -cert)
  openssl ocsp "$@" -issuer issuing.pem -cert svc.pem -url "$OCSP_URL" -CAfile root.pem \
    -verify_other chain.pem 2>&1 || true
}

# RFC 5019 2.2.4: nextUpdate is set, later than thisUpdate.
next_after_this() {  # next_after_this <openssl ocsp output>
  local this next
  this=$(printf '%s\n' "$1" | sed -n 's/^[[:space:]]*This Update: //p')
  next=$(printf '%s\n' "$1" | sed -n 's/^[[:space:]]*Next Update: //p')
  [ -n "$this" ] && [ -n "$next" ] && [ "$(date -ud "$next" +%s)" -gt "$(date -ud "$this" +%s)" ] \
    || { printf '%s\n' "$1"; fail "no nextUpdate after thisUpdate"; }
}

step "openssl ocsp: good (SHA-1 CertID, with a nonce)"
out=$(ask); expect_line "Response verify OK" "$out"; expect_line "svc.pem: good" "$out"
next_after_this "$out"
step "openssl ocsp -sha256 -no_nonce: good"
out=$(ask -sha256 -no_nonce); expect_line "Response verify OK" "$out"
expect_line "svc.pem: good" "$out"
step "the responder is the CA's delegated OCSP signer (EKU OCSPSigning, ocsp-nocheck)"
out=$(ask -no_nonce -resp_text)
printf '%s\n' "$out" | sed -n '/^-----BEGIN CERTIFICATE-----$/,/^-----END CERTIFICATE-----$/p' \
  > responder.pem
openssl verify -partial_chain -CAfile issuing.pem responder.pem >/dev/null \
  || fail "the responder certificate is not issued by the issuing CA"
ext=$(openssl x509 -in responder.pem -noout -ext extendedKeyUsage,noCheck)
expect_line "OCSP Signing" "$ext"; expect_line "OCSP No Check:" "$ext"
# ResponderID byKey: the SHA-1 of the responder's key, which is its subject key identifier
SKI=$(openssl x509 -in responder.pem -noout -ext subjectKeyIdentifier | tail -n 1 | tr -d ' :')
expect_line "Responder Id: $SKI" "$out"

step "GET $OCSP_URL/<base64> with curl (RFC 5019), then openssl ocsp -respin"
openssl ocsp -issuer issuing.pem -cert svc.pem -no_nonce -reqout req.der
B64=$(openssl base64 -A -in req.der)
ENCODED=$(python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1], safe=""))' "$B64")
curl -fsS -D headers.txt "$OCSP_URL/$ENCODED" -o resp.der
grep -qi "^content-type: application/ocsp-response" headers.txt || fail "content type"
grep -qi "^cache-control: max-age=[0-9]*, public, no-transform, must-revalidate" headers.txt \
  || { cat headers.txt; fail "RFC 5019 Cache-Control"; }
grep -qi "^etag: " headers.txt && grep -qi "^last-modified: " headers.txt \
  && grep -qi "^expires: " headers.txt || fail "ETag, Last-Modified, Expires"
out=$(openssl ocsp -respin resp.der -issuer issuing.pem -cert svc.pem -CAfile root.pem \
  -verify_other chain.pem 2>&1)
expect_line "Response verify OK" "$out"; expect_line "svc.pem: good" "$out"
ETAG=$(grep -i "^etag: " headers.txt | cut -d' ' -f2- | tr -d '\r')
# With an in-process cache each gateway process signs its own copy (another ETag, answered
# with 200 and the full response); the process that made this one answers 304.
seen=""
for _ in 1 2 3 4 5 6 7 8 9 10; do
  CODE=$(curl -sS -o /dev/null -w '%{http_code}' -H "If-None-Match: $ETAG" "$OCSP_URL/$ENCODED")
  case "$CODE" in 304) seen=1; break ;; 200) ;; *) fail "If-None-Match gave $CODE" ;; esac
done
[ -n "$seen" ] || fail "If-None-Match never gave 304"

step "vcc-pki revoke $SERIAL (another process): revoked in OCSP within 1 s"
"$VCC_PKI" revoke "$SERIAL" --reason key_compromise
returned=$(ms)
# Only an answer to a request SENT a second or more after the revoke call returned may not
# say good; earlier ones may, and are asked again. So a slow `openssl ocsp` run cannot
# fail the check, and the loop ends: from that second on, each answer passes or fails.
revoked() {  # revoked <ask options...>: ask until revoked; fail on a late good
  local sent
  while :; do
    sent=$(ms)
    out=$(ask "$@")
    if printf '%s\n' "$out" | has -xF "svc.pem: revoked"; then return 0; fi
    if (( sent - returned >= 1000 )); then
      printf '%s\n' "$out"
      fail "not revoked for a request sent $((sent - returned)) ms after the revoke returned"
    fi
    sleep 0.05
  done
}
revoked -no_nonce
echo "revoked after $(( $(ms) - returned )) ms"
WHEN=$(openssl_time "$(revoked_at "$SERIAL")")
expect_line "Reason: keyCompromise" "$out"; expect_line "Revocation Time: $WHEN" "$out"
expect_line "Response verify OK" "$out"
step "every gateway process says revoked within 1 s (new connections spread over the workers)"
for _ in 1 2 3 4 5 6 7 8; do
  revoked -sha256 -no_nonce
  expect_line "Revocation Time: $WHEN" "$out"
  revoked
  expect_line "Revocation Time: $WHEN" "$out"
done
echo "every process: revoked after $(( $(ms) - returned )) ms"
step "GET after revocation"
curl -fsS "$OCSP_URL/$ENCODED" -o resp2.der
out=$(openssl ocsp -respin resp2.der -issuer issuing.pem -cert svc.pem -CAfile root.pem \
  -verify_other chain.pem 2>&1)
expect_line "svc.pem: revoked" "$out"; expect_line "Revocation Time: $WHEN" "$out"
expect_line "Reason: keyCompromise" "$out"

step "a certificate of an issuer this responder does not serve: unauthorized"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout other.key \
  -out other-ca.pem -subj "/CN=Elsewhere CA" -days 2 2>/dev/null
out=$(openssl ocsp -issuer other-ca.pem -cert other-ca.pem -url "$OCSP_URL" -no_nonce 2>&1 || true)
expect_line "Responder Error: unauthorized (6)" "$out"

step "garbage: malformedrequest; wrong media type: 415; 1 MiB body: 413"
printf 'not an OCSP request' > garbage.der
curl -fsS -H "Content-Type: application/ocsp-request" --data-binary @garbage.der "$OCSP_URL" \
  -o bad.der
out=$(openssl ocsp -respin bad.der -noverify 2>&1 || true)
expect_line "Responder Error: malformedrequest (1)" "$out"
curl -fsS "$OCSP_URL/not-base64!!" -o bad2.der
out=$(openssl ocsp -respin bad2.der -noverify 2>&1 || true)
expect_line "Responder Error: malformedrequest (1)" "$out"
CODE=$(curl -sS -o /dev/null -w '%{http_code}' -H "Content-Type: text/plain" \
  --data-binary @req.der "$OCSP_URL")
[ "$CODE" = 415 ] || fail "wrong media type gave $CODE"
head -c 1048576 /dev/zero > big.der
CODE=$(curl -sS -o /dev/null -w '%{http_code}' -H "Content-Type: application/ocsp-request" \
  --data-binary @big.der "$OCSP_URL")
[ "$CODE" = 413 ] || fail "a 1 MiB body gave $CODE"
echo "OK"
