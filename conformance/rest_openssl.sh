#!/usr/bin/env bash
# Drive a running gateway with the real clients: openssl makes the key and CSR, curl talks
# to the REST API, openssl verifies the chain; then revoke and check the status.
#
#   VCC_PKI_DATA_DIR=vcc-pki-data conformance/rest_openssl.sh
#
# Needs: openssl, curl, python3 (JSON only), `vcc-pki` on PATH (or VCC_PKI_BIN).
# Env: HTTP_URL (default http://127.0.0.1:8080), HTTPS_URL (default https://localhost:8443),
#      KEY_ALG (ec | rsa, default ec), VCC_PKI_BIN.
set -euo pipefail

HTTP_URL=${HTTP_URL:-http://127.0.0.1:8080}
HTTPS_URL=${HTTPS_URL:-https://localhost:8443}
KEY_ALG=${KEY_ALG:-ec}
VCC_PKI=${VCC_PKI_BIN:-vcc-pki}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"

step() { printf '== %s\n' "$*"; }
json() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }

step "fetch the root certificate over plain HTTP (what a newcomer trusts)"
curl -fsS "$HTTP_URL/ca/root.pem" -o root.pem
openssl x509 -in root.pem -noout -subject

step "create an API token (cert_manager of the default organization)"
TOKEN=$("$VCC_PKI" token create --org default --role cert_manager 2>/dev/null)

step "key and CSR with openssl ($KEY_ALG)"
if [ "$KEY_ALG" = rsa ]; then
  openssl req -new -newkey rsa:2048 -nodes -keyout svc.key -out svc.csr \
    -subj "/CN=svc.example.test" -addext "subjectAltName=DNS:svc.example.test,IP:127.0.0.1" \
    2>/dev/null
else
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout svc.key \
    -out svc.csr -subj "/CN=svc.example.test" \
    -addext "subjectAltName=DNS:svc.example.test,IP:127.0.0.1" 2>/dev/null
fi
python3 -c 'import json,sys; print(json.dumps({"csr": open("svc.csr").read(), "profile": "vcc_service", "validity_days": 30}))' > request.json

step "POST /api/v1/certificates with curl over HTTPS (server certificate checked against the root)"
curl -fsS --cacert root.pem -H "Authorization: Bearer $TOKEN" -H "Content-Type: application/json" \
  --data @request.json "$HTTPS_URL/api/v1/certificates" -o issued.json
SERIAL=$(json '["serial"]' < issued.json)
json '["certificate_pem"]' < issued.json > svc.pem
json '["chain_pem"]' < issued.json > chain.pem
echo "serial $SERIAL"

step "openssl verify: leaf -> chain -> root, TLS server purpose"
openssl verify -purpose sslserver -CAfile root.pem -untrusted chain.pem svc.pem
openssl x509 -in svc.pem -noout -ext subjectAltName,extendedKeyUsage

step "the certificate matches the key openssl made"
[ "$(openssl x509 -in svc.pem -noout -pubkey)" = "$(openssl pkey -in svc.key -pubout)" ]

step "GET /api/v1/certificates/$SERIAL"
STATUS=$(curl -fsS --cacert root.pem -H "Authorization: Bearer $TOKEN" \
  "$HTTPS_URL/api/v1/certificates/$SERIAL" | json '["status"]')
[ "$STATUS" = active ]

step "vcc-pki revoke $SERIAL --reason key_compromise"
"$VCC_PKI" revoke "$SERIAL" --reason key_compromise
STATUS=$(curl -fsS --cacert root.pem -H "Authorization: Bearer $TOKEN" \
  "$HTTPS_URL/api/v1/certificates/$SERIAL" | json '["status"]')
[ "$STATUS" = revoked ]

step "revoking again through the API is a 409 problem"
CODE=$(curl -sS -o problem.json -w '%{http_code}' --cacert root.pem \
  -H "Authorization: Bearer $TOKEN" -H "Content-Type: application/json" \
  -d '{"reason":"superseded"}' "$HTTPS_URL/api/v1/certificates/$SERIAL/revoke")
[ "$CODE" = 409 ]
grep -q 'already revoked' problem.json

step "vcc-pki audit verify"
"$VCC_PKI" audit verify
echo "OK"
