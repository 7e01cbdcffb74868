#!/usr/bin/env bash
# The README's "Admin API" curl examples, run against a serving gateway (issue 13):
# organizations, tokens, service accounts (mTLS), ACME EAB keys and accounts, certificate
# listing and downloads, renewal, the audit log.
#
#   VCC_PKI_DATA_DIR=vcc-pki-data conformance/rest_admin_curl.sh
#
# Needs: curl, openssl, python3 (JSON only), `vcc-pki` on PATH (or VCC_PKI_BIN).
# Env: HTTP_URL (default http://127.0.0.1:8080), HTTPS_URL (default https://localhost:8443),
# EST_URL (the port that requests client certificates; default https://localhost:8444).
set -euo pipefail
# grep -q would stop reading at the first match: the writer then dies of SIGPIPE.
has() { grep "$@" >/dev/null; }

HTTP_URL=${HTTP_URL:-http://127.0.0.1:8080}
HTTPS_URL=${HTTPS_URL:-https://localhost:8443}
EST_URL=${EST_URL:-https://localhost:8444}
VCC_PKI=${VCC_PKI_BIN:-vcc-pki}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
step() { printf '== %s\n' "$*"; }
json() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }

curl -fsS "$HTTP_URL/ca/root.pem" -o root.pem
ADMIN=$("$VCC_PKI" token create --org default --role pki_super_admin 2>/dev/null)
api() { curl -fsS --cacert root.pem -H "Authorization: Bearer $ADMIN" "$@"; }

step "an organization with a policy, and a cert_manager token for it"
api -H "Content-Type: application/json" -d '{"slug": "health", "name": "Health",
  "isolation": "strict", "policy": {"allowed_names": ["health.example"],
  "max_validity_days": 90}}' "$HTTPS_URL/api/v1/organizations" | json '["status"]'
TOKEN=$(api -H "Content-Type: application/json" \
  -d '{"organization": "health", "role": "cert_manager", "expires_in_days": 30}' \
  "$HTTPS_URL/api/v1/tokens" | json '["token"]')
api "$HTTPS_URL/api/v1/tokens?organization=health" | json '["items"][0]["role"]'

step "issue two certificates as the organization"
for host in web api; do
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout $host.key \
    -out $host.csr -subj "/CN=$host.health.example" 2>/dev/null
  python3 -c "import json; print(json.dumps({'csr': open('$host.csr').read()}))" |
    curl -fsS --cacert root.pem -H "Authorization: Bearer $TOKEN" \
      -H "Content-Type: application/json" --data @- "$HTTPS_URL/api/v1/certificates" \
    | json '["serial"]' > $host.serial
done
SERIAL=$(cat web.serial)

step "list: filters and a cursor"
curl -fsS --cacert root.pem -H "Authorization: Bearer $TOKEN" \
  "$HTTPS_URL/api/v1/certificates?status=active&q=web.health&limit=10" > list.json
test "$(json '["items"][0]["serial"]' < list.json)" = "$SERIAL"
NEXT=$(curl -fsS --cacert root.pem -H "Authorization: Bearer $TOKEN" \
  "$HTTPS_URL/api/v1/certificates?limit=1" | json '["next"]')
curl -fsS --cacert root.pem -H "Authorization: Bearer $TOKEN" \
  "$HTTPS_URL/api/v1/certificates?limit=1&cursor=$NEXT" | json '["items"][0]["subject"]'

step "download as PEM (with its chain), DER and PKCS#7; verify"
curl -fsS --cacert root.pem -H "Authorization: Bearer $TOKEN" \
  "$HTTPS_URL/api/v1/certificates/$SERIAL?format=pem" -o web-chain.pem
openssl verify -CAfile root.pem -untrusted web-chain.pem web-chain.pem
curl -fsS --cacert root.pem -H "Authorization: Bearer $TOKEN" \
  "$HTTPS_URL/api/v1/certificates/$SERIAL?format=der" -o web.cer
openssl x509 -inform DER -in web.cer -noout -serial
curl -fsS --cacert root.pem -H "Authorization: Bearer $TOKEN" \
  "$HTTPS_URL/api/v1/certificates/$SERIAL?format=pkcs7" -o web.p7c
openssl pkcs7 -inform DER -in web.p7c -print_certs -noout | grep -c subject=

step "renew (same key and names), then revoke the old one"
curl -fsS --cacert root.pem -H "Authorization: Bearer $TOKEN" -X POST \
  "$HTTPS_URL/api/v1/certificates/$SERIAL/renew" | json '["serial"]'
curl -fsS --cacert root.pem -H "Authorization: Bearer $TOKEN" -H "Content-Type: application/json" \
  -d '{"reason": "superseded"}' "$HTTPS_URL/api/v1/certificates/$SERIAL/revoke" | json '["status"]'

step "the audit log: query, verify, export (JSON Lines)"
api "$HTTPS_URL/api/v1/audit?action=revoke&limit=5" | json '["items"][-1]["event_type"]'
api "$HTTPS_URL/api/v1/audit/verify" | json '["intact"]' | has -x True
api "$HTTPS_URL/api/v1/audit/export" -o audit.jsonl
test "$(wc -l < audit.jsonl)" -gt 5

step "ACME EAB keys: create (HMAC key once), list, revoke; accounts: list"
KID=$(api -H "Content-Type: application/json" -d '{"organization": "health"}' \
  "$HTTPS_URL/api/v1/acme/eab" | json '["kid"]')
api "$HTTPS_URL/api/v1/acme/eab?organization=health" | json '["items"][0]["kid"]' \
  | grep -qx "$KID"
api -X DELETE "$HTTPS_URL/api/v1/acme/eab/$KID" | json '["kid"]'
api "$HTTPS_URL/api/v1/acme/accounts?organization=health" | json '["items"]'

step "a service account: a client certificate of any CA, pinned, works on the EST port"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout robot.key \
  -out robot.pem -days 30 -subj "/CN=robot.health.example" \
  -addext "basicConstraints=critical,CA:FALSE" -addext "extendedKeyUsage=clientAuth" 2>/dev/null
python3 -c "import json; print(json.dumps({'organization': 'health', 'name': 'robot',
  'role': 'cert_manager', 'certificate': open('robot.pem').read()}))" |
  api -H "Content-Type: application/json" --data @- "$HTTPS_URL/api/v1/service-accounts" \
  | json '["id"]' > robot.id
curl -fsS --cacert root.pem --cert robot.pem --key robot.key \
  "$EST_URL/api/v1/certificates?q=web.health" | json '["items"][0]["subject"]'
code=$(curl -sS -o /dev/null -w '%{http_code}' --cacert root.pem --cert robot.pem \
  --key robot.key "$HTTPS_URL/api/v1/certificates")
test "$code" = 401  # 8443 never asks for a client certificate
api -X DELETE "$HTTPS_URL/api/v1/service-accounts/$(cat robot.id)" | json '["revoked"]' \
  | has -x True
code=$(curl -sS -o /dev/null -w '%{http_code}' --cacert root.pem --cert robot.pem \
  --key robot.key "$EST_URL/api/v1/certificates")
test "$code" = 401  # revoked: at once

step "disable the organization: its token stops at once"
api -X PATCH -H "Content-Type: application/json" -d '{"status": "disabled"}' \
  "$HTTPS_URL/api/v1/organizations/health" | json '["status"]'
code=$(curl -sS -o /dev/null -w '%{http_code}' --cacert root.pem \
  -H "Authorization: Bearer $TOKEN" "$HTTPS_URL/api/v1/certificates")
test "$code" = 401

step "the OpenAPI description"
curl -fsS --cacert root.pem "$HTTPS_URL/api/v1/openapi.json" | json '["openapi"]'
echo OK
