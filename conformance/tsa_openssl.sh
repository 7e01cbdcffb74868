#!/usr/bin/env bash
# Drive a running gateway's time-stamping authority (RFC 3161) with the real client:
# `openssl ts -query` makes the requests, curl posts them, `openssl ts -reply -text` reads
# the replies and `openssl ts -verify` checks them against nothing but the root certificate.
#
#   VCC_PKI_DATA_DIR=vcc-pki-data conformance/tsa_openssl.sh
#
# Needs: openssl, curl; `vcc-pki` on PATH (or VCC_PKI_BIN) for the `tsa show` step, which
# reads the same data directory (skip it with VCC_PKI_BIN=none against a remote gateway).
# Env: HTTP_URL (default http://127.0.0.1:8080), VCC_PKI_BIN.
set -euo pipefail
# grep -q would stop reading at the first match: the writer then dies of SIGPIPE.
has() { grep "$@" >/dev/null; }

HTTP_URL=${HTTP_URL:-http://127.0.0.1:8080}
VCC_PKI=${VCC_PKI_BIN:-vcc-pki}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"

step() { printf '== %s\n' "$*"; }
fail() { printf 'FAILED: %s\n' "$*" >&2; exit 1; }
# POST a query file, write the reply; prints the HTTP status.
post() {
  curl -sS -o "$2" -w '%{http_code}' -H "Content-Type: ${3:-application/timestamp-query}" \
    --data-binary "@$1" "$HTTP_URL/tsa"
}
stamp() {  # stamp NAME QUERY-OPTIONS...: NAME.tsq -> NAME.tsr, NAME.txt (openssl -text)
  local name=$1; shift
  openssl ts -query -data document.bin "$@" -out "$name.tsq" 2>/dev/null
  [ "$(post "$name.tsq" "$name.tsr")" = 200 ] || fail "POST /tsa for $name"
  openssl ts -reply -in "$name.tsr" -text > "$name.txt" 2>/dev/null
}
verify() { openssl ts -verify "$@" -CAfile root.pem 2>&1; }
line() {  # line NAME TEXT: NAME.txt has a line that is exactly TEXT
  grep -qxF -- "$2" "$1.txt" || fail "$1: no line '$2' in: $(cat "$1.txt")"
}
granted() {  # granted NAME: a granted reply that carries a token
  line "$1" 'Status: Granted.'; line "$1" 'Failure info: unspecified'
  if grep -qxF 'Not included.' "$1.txt"; then fail "$1: granted without a token"; fi
}
rejected() {  # rejected NAME FAILURE-INFO: a rejection for exactly that reason, and no token
  line "$1" 'Status: Rejected.'; line "$1" "Failure info: $2"; line "$1" 'Not included.'
}

step "fetch the root certificate (the only trust anchor) and the TSA chain"
curl -fsS "$HTTP_URL/ca/root.pem" -o root.pem
curl -fsS "$HTTP_URL/tsa/chain.pem" -o chain.pem
openssl x509 -in root.pem -noout -subject
head -c 65536 /dev/urandom > document.bin
cp document.bin changed.bin && printf 'x' >> changed.bin

for hash in sha256 sha384 sha512; do
  step "openssl ts -query -$hash -cert | curl POST /tsa | openssl ts -reply -text"
  stamp "$hash" "-$hash" -cert
  granted "$hash"
  line "$hash" "Hash Algorithm: $hash"
  grep -qxE 'Policy OID: [0-2](\.[0-9]+)+' "$hash.txt" || fail "$hash: no policy OID"
  line "$hash" 'Accuracy: 0x01 seconds, unspecified millis, unspecified micros'
  # the nonce came back as it was sent
  sent=$(openssl ts -query -in "$hash.tsq" -text 2>/dev/null | sed -n 's/^Nonce: //p')
  [ -n "$sent" ] && [ "$sent" = "$(sed -n 's/^Nonce: //p' "$hash.txt")" ] \
    || fail "$hash: nonce not echoed"
  step "openssl ts -verify -queryfile $hash.tsq -CAfile root.pem (certReq: chain in the token)"
  verify -queryfile "$hash.tsq" -in "$hash.tsr" | tee verify.out
  grep -qx 'Verification: OK' verify.out
  step "openssl ts -verify -data document.bin (the file itself) and a changed file fails"
  verify -data document.bin -in "$hash.tsr" | has -x 'Verification: OK'
  if verify -data changed.bin -in "$hash.tsr" > changed.out; then
    fail "$hash: a changed file verified"
  fi
  grep -q 'message imprint mismatch' changed.out || fail "$hash: $(cat changed.out)"
done

step "without -cert the token carries no certificates: verify with -untrusted chain.pem"
stamp nocert -sha256
granted nocert
verify -queryfile nocert.tsq -in nocert.tsr -untrusted chain.pem | has -x 'Verification: OK'
if verify -queryfile nocert.tsq -in nocert.tsr > nochain.out; then
  fail "a token without certificates verified without the chain"
fi

step "-no_nonce"
stamp nononce -sha256 -cert -no_nonce
granted nononce
line nononce 'Nonce: unspecified'
verify -queryfile nononce.tsq -in nononce.tsr | has -x 'Verification: OK'

step "the bare token (-token_out) verifies with -token_in"
openssl ts -reply -in sha256.tsr -token_out -out sha256.tst 2>/dev/null
verify -data document.bin -in sha256.tst -token_in | has -x 'Verification: OK'

SERIAL=$(sed -n 's/^Serial number: //p' sha256.txt)
if [ "$VCC_PKI" != none ]; then
  step "vcc-pki tsa show $SERIAL: the token was recorded"
  "$VCC_PKI" tsa show "$SERIAL" | tee show.out
  grep -qx "hash algorithm  sha256" show.out
  grep -qx "message imprint $(openssl dgst -sha256 -r document.bin | cut -d' ' -f1)" show.out
fi

step "bad input is answered in RFC 3161's own form (HTTP 200, PKIStatus rejection)"
printf 'this is not DER' > garbage.tsq
[ "$(post garbage.tsq garbage.tsr)" = 200 ]
openssl ts -reply -in garbage.tsr -text 2>/dev/null > garbage.txt
rejected garbage 'the data submitted has the wrong format'  # badDataFormat
head -c 20 sha256.tsq > truncated.tsq
[ "$(post truncated.tsq truncated.tsr)" = 200 ]
openssl ts -reply -in truncated.tsr -text 2>/dev/null > truncated.txt
rejected truncated 'the data submitted has the wrong format'
stamp sha1 -sha1
rejected sha1 'unrecognized or unsupported algorithm identifier'  # badAlg
stamp policy -sha256 -tspolicy 1.2.3.4.5
rejected policy 'the requested TSA policy is not supported by the TSA'  # unacceptedPolicy

step "other media types: 415; a huge body: 413"
[ "$(post sha256.tsq wrongtype.out application/octet-stream)" = 415 ]
head -c 70000 /dev/zero > huge.tsq
[ "$(post huge.tsq huge.out)" = 413 ]
echo "OK"
