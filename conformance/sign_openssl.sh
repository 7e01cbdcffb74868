#!/usr/bin/env bash
# Code signing with time-stamps (issue 14) through the CLI against a running gateway, checked
# by OpenSSL: `vcc-pki sign` hashes a file, asks POST /api/v1/signatures and writes FILE.p7s;
# `openssl cms -verify` checks it against nothing but the root, `openssl ts -verify` the
# time-stamp token taken out of it, and `vcc-pki verify` says "valid at signing time" once
# the signing certificate is revoked after the time-stamp.
#
#   VCC_PKI_DATA_DIR=vcc-pki-data conformance/sign_openssl.sh
#
# Needs: openssl, curl, awk; `vcc-pki` on PATH (or VCC_PKI_BIN) on the gateway's data
# directory (it makes tokens and revokes). Env: HTTP_URL (default http://127.0.0.1:8080),
# HTTPS_URL (default https://localhost:8443), VCC_PKI_BIN.
set -euo pipefail
has() { grep "$@" >/dev/null; }

HTTP_URL=${HTTP_URL:-http://127.0.0.1:8080}
HTTPS_URL=${HTTPS_URL:-https://localhost:8443}
VCC_PKI=${VCC_PKI_BIN:-vcc-pki}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"

step() { printf '== %s\n' "$*"; }
fail() { printf 'FAILED: %s\n' "$*" >&2; exit 1; }
cms_verify() {  # cms_verify FILE SIGNATURE [openssl options]: openssl's verdict on stderr
  local file=$1 sig=$2; shift 2
  openssl cms -verify -binary -content "$file" -inform DER -in "$sig" -CAfile root.pem \
    -out /dev/null "$@" 2>&1 || true
}
# extract SIGNATURE: token.der (the id-aa-signatureTimeStampToken's ContentInfo) and
# signature.bin (the SignerInfo's signature value, an ECDSA-Sig-Value), by their offsets in
# `openssl asn1parse`.
extract() {
  openssl asn1parse -inform DER -in "$1" > parsed.txt
  local token_at value_at
  token_at=$(awk '/:id-smime-aa-timeStampToken/ {getline; getline; sub(":.*", "", $1);
                  print $1; exit}' parsed.txt)
  value_at=$(awk '/cons: cont \[ 1 \]/ {sub(":.*", "", prev); print prev; exit}
                  {prev = $1}' parsed.txt)
  [ -n "$token_at" ] || fail "no id-aa-signatureTimeStampToken in $1"
  [ -n "$value_at" ] || fail "no unsigned attributes in $1"
  openssl asn1parse -inform DER -in "$1" -strparse "$token_at" -out token.der -noout
  openssl asn1parse -inform DER -in "$1" -strparse "$value_at" -out signature.bin -noout
}

step "the root (the only trust anchor), a code_signer token, the signing key"
curl -fsS "$HTTP_URL/ca/root.pem" -o root.pem
"$VCC_PKI" signer ensure --org default
token=$("$VCC_PKI" token create --org default --role code_signer --name conformance \
        2>/dev/null)
auditor=$("$VCC_PKI" token create --org default --role auditor 2>/dev/null)
export VCC_PKI_URL=$HTTPS_URL VCC_PKI_TOKEN=$token
head -c 200000 /dev/urandom > vcc_clara-3.0-py3-none-any.whl
cp vcc_clara-3.0-py3-none-any.whl changed.whl && printf 'x' >> changed.whl

step "vcc-pki sign FILE --type python_package (sha256) -> FILE.p7s"
"$VCC_PKI" sign vcc_clara-3.0-py3-none-any.whl --type python_package \
  --metadata '{"service": "clara"}' | tee sign.txt
[ -s vcc_clara-3.0-py3-none-any.whl.p7s ] || fail "no FILE.p7s"
serial=$(sed -n 's/.* serial \([0-9A-F]*\);.*/\1/p' sign.txt)
[ -n "$serial" ] || fail "no signer serial in: $(cat sign.txt)"

step "openssl cms -verify -binary -content FILE -CAfile root.pem -purpose any"
# OpenSSL 3.0's cms checks the S/MIME signing purpose unless told otherwise, and knows no
# code-signing one (3.2 adds -purpose codesign): "any" checks the path to the root only.
out=$(cms_verify vcc_clara-3.0-py3-none-any.whl vcc_clara-3.0-py3-none-any.whl.p7s \
      -purpose any)
echo "$out" | has -x "CMS Verification successful" || fail "openssl cms: $out"
out=$(cms_verify vcc_clara-3.0-py3-none-any.whl vcc_clara-3.0-py3-none-any.whl.p7s)
echo "$out" | has "unsuitable certificate purpose" || fail "default purpose: $out"

step "a changed file fails (openssl cms, vcc-pki verify)"
out=$(cms_verify changed.whl vcc_clara-3.0-py3-none-any.whl.p7s -purpose any)
echo "$out" | has "Verification successful" && fail "changed file verified: $out"
echo "$out" | has "content verify error" || fail "changed file: $out"
if "$VCC_PKI" verify changed.whl vcc_clara-3.0-py3-none-any.whl.p7s > changed.txt; then
  fail "vcc-pki verify accepted a changed file"
fi
has "NOT valid" changed.txt || fail "vcc-pki verify: $(cat changed.txt)"

step "the time-stamp token in the signature: openssl ts -verify -data <signature value>"
extract vcc_clara-3.0-py3-none-any.whl.p7s
openssl ts -reply -in token.der -token_in -text > token.txt 2>/dev/null
has -x "Hash Algorithm: sha256" token.txt || fail "token: $(cat token.txt)"
out=$(openssl ts -verify -in token.der -token_in -data signature.bin -CAfile root.pem 2>&1)
echo "$out" | has -x "Verification: OK" || fail "openssl ts -verify: $out"
head -c 71 /dev/urandom > other.bin
out=$(openssl ts -verify -in token.der -token_in -data other.bin -CAfile root.pem 2>&1 || true)
echo "$out" | has -x "Verification: OK" && fail "the token verified over other data"

step "vcc-pki verify FILE FILE.p7s (offline, against the data directory's root)"
"$VCC_PKI" verify vcc_clara-3.0-py3-none-any.whl vcc_clara-3.0-py3-none-any.whl.p7s \
  | tee verify.txt
has -x "vcc_clara-3.0-py3-none-any.whl: valid" verify.txt || fail "$(cat verify.txt)"
has "^time-stamp: " verify.txt || fail "no time-stamp: $(cat verify.txt)"

step "sha512: vcc-pki sign --hash sha512 a Helm chart, openssl cms -verify"
head -c 50000 /dev/urandom > argus-1.2.0.tgz
"$VCC_PKI" sign argus-1.2.0.tgz --type helm_chart --hash sha512 --out chart.p7s
out=$(cms_verify argus-1.2.0.tgz chart.p7s -purpose any)
echo "$out" | has -x "CMS Verification successful" || fail "sha512: $out"
openssl asn1parse -inform DER -in chart.p7s | has ":sha512" || fail "no sha512 digest"

step "refused: an auditor's token (403), another organization (403), an unknown type"
"$VCC_PKI" org create beta > /dev/null
if VCC_PKI_TOKEN=$auditor "$VCC_PKI" sign argus-1.2.0.tgz --type helm_chart \
    --out refused.p7s 2> refused.txt; then fail "an auditor signed"; fi
has "(403)" refused.txt || fail "auditor: $(cat refused.txt)"
if "$VCC_PKI" sign argus-1.2.0.tgz --type helm_chart --org beta --out refused.p7s \
    2> refused.txt; then fail "signed for another organization"; fi
has "(403)" refused.txt || fail "other org: $(cat refused.txt)"
[ ! -e refused.p7s ] || fail "a refused signature was written"
if "$VCC_PKI" sign argus-1.2.0.tgz --type firmware 2> refused.txt; then
  fail "an unknown artifact type was accepted"
fi

step "revoke the signing certificate after the time-stamp: valid at signing time"
stamped=$(date -d "$(sed -n 's/^Time stamp: //p' token.txt)" +%s)
# Revocation times have whole seconds: let the time-stamp's second end first.
while [ "$(date +%s)" -le "$stamped" ]; do sleep 0.1; done
"$VCC_PKI" revoke "$serial" --reason superseded
for _ in $(seq 100); do  # the gateway publishes a new CRL after a revocation
  curl -fsS "$HTTP_URL/crl/default-issuing.crl" -o issuing.crl
  if openssl crl -inform DER -in issuing.crl -noout -text | has "Serial Number: $serial"; then
    break
  fi
  sleep 0.1
done
openssl crl -inform DER -in issuing.crl -noout -text | has "Serial Number: $serial" \
  || fail "the CRL does not list $serial"
# OpenSSL knows no time-stamped signatures: with the CRL it refuses the signature outright
# (its CRLs come in the -CAfile PEM).
{ cat root.pem; openssl crl -inform DER -in issuing.crl; } > root-and-crl.pem
out=$(openssl cms -verify -binary -content vcc_clara-3.0-py3-none-any.whl -inform DER \
      -in vcc_clara-3.0-py3-none-any.whl.p7s -CAfile root-and-crl.pem -purpose any \
      -crl_check -out /dev/null 2>&1 || true)
echo "$out" | has "certificate revoked" || fail "openssl with the CRL: $out"
"$VCC_PKI" verify vcc_clara-3.0-py3-none-any.whl vcc_clara-3.0-py3-none-any.whl.p7s \
  --crl issuing.crl | tee revoked.txt
has -x "vcc_clara-3.0-py3-none-any.whl: valid at signing time" revoked.txt \
  || fail "$(cat revoked.txt)"
has "after the time-stamp" revoked.txt || fail "$(cat revoked.txt)"

echo OK
